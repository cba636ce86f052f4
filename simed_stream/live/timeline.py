"""A bounded, numbered sequence of records: its writers append, any thread reads it without a lock.

Every record is a tuple whose first element is its sequence number (1, 2, 3, … without gaps).
The writer keeps the newest `capacity` records and publishes them as one immutable tuple after
each append; a reader takes that tuple (one reference, atomic) and slices what it has not seen.
Writers must be one thread at a time (the owner's thread, or under the owner's lock)."""

from __future__ import annotations

from collections import deque
from typing import Iterable


class Timeline:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a timeline keeps at least one record, not {capacity}")
        self.capacity = capacity
        self._kept: deque[tuple] = deque(maxlen=capacity)
        self._last = 0
        self.records: tuple[tuple, ...] = ()  # published: newest last

    def append(self, *values) -> int:
        """Add one record; returns its sequence number."""
        return self.extend([values])

    def extend(self, many: Iterable[tuple]) -> int:
        """Add records in order and publish once; returns the last sequence number."""
        for values in many:
            self._last += 1
            self._kept.append((self._last, *values))
        self.records = tuple(self._kept)
        return self._last

    @property
    def last(self) -> int:
        """The newest published record's number (0: none yet)."""
        records = self.records
        return records[-1][0] if records else 0

    def since(self, seq: int, limit: int | None = None) -> tuple[tuple, ...]:
        """Records numbered above `seq`, oldest first, at most `limit` of them (those still kept)."""
        records = self.records
        if not records:
            return ()
        start = max(0, seq - records[0][0] + 1)
        return records[start:] if limit is None else records[start:start + limit]
