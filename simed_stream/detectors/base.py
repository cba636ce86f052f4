"""What every detector adapter gives the receiver: its wire format turned into the receiver's own
events — series start, frames, overview, series end (the `protocol` message types) — or a
rejection that says why and, where known, which frames it cost.

An adapter owns its transport (a ZeroMQ socket or a TCP connection). The receive thread
(`ingest/wire.py`) calls `poll` again and again; nothing else touches the adapter, so adapters
keep their state without locks. Everything downstream — accounting, sums, centring, capture —
is one code path, whatever the detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from simed_stream.protocol import Message, ProtocolError


@dataclass(frozen=True)
class Decoded:
    """One event for the receiver: a message (with its simed-stream/1 header bytes, kept verbatim
    in the capture) or a rejection."""

    message: Message | None = None
    header_bytes: bytes = b""
    error: ProtocolError | None = None


class Adapter(ABC):
    """A detector's data stream as receiver events."""

    #: the source's name in the settings (`simed`, `dectris`, `merlin`, `serval`)
    name: str = ""

    @abstractmethod
    def open(self) -> None:
        """Connect (or bind); raises `zmq.ZMQError` or `OSError` for an endpoint that cannot be used."""

    @abstractmethod
    def poll(self, timeout_ms: int) -> list[Decoded]:
        """Wait up to `timeout_ms` for data; return the events it completed (often none)."""

    @abstractmethod
    def close(self) -> None:
        """Release the transport; events still buffered are lost only if `flush` was not called."""

    def flush(self) -> list[Decoded]:
        """At stop: events held back (a partial batch of frames); the default holds none."""
        return []
