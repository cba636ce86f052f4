"""Faults a fake detector injects, each seeded and reported, so tests know exactly which frames
went where: the plan (`--faults`), the report, and what a fault does to a frames message."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from simed_stream.protocol import encode_header

#: Faults applied per frames message with a probability, and faults given as a count or a flag.
PER_MESSAGE_FAULTS = ("drop", "source_drop", "reorder", "duplicate", "truncate", "garbage", "wrong_shape",
                      "wrong_dtype")
COUNTED_FAULTS = ("oversize", "disconnect")
FLAG_FAULTS = ("no_end", "no_overview")
TIMED_FAULTS = ("late_overview",)


@dataclass(frozen=True)
class FaultPlan:
    """Parsed `--faults`, e.g. "drop=0.01,duplicate=0.02,oversize=1,disconnect=1,late_overview=2,no_end"."""

    probabilities: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    late_overview_s: float | None = None

    @property
    def touches_headers(self) -> bool:
        """Faults that add, remove or hold back messages make recorded msg_seq values wrong."""
        return bool(self.probabilities or self.counts or self.flags or self.late_overview_s is not None)

    @classmethod
    def parse(cls, spec: str | None) -> "FaultPlan":
        probabilities, counts, flags, late = {}, {}, set(), None
        allowed = PER_MESSAGE_FAULTS + COUNTED_FAULTS + FLAG_FAULTS + TIMED_FAULTS
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, _, value = item.partition("=")
            if name not in allowed:
                raise ValueError(f"unknown fault {name!r}; allowed: {', '.join(allowed)}")
            try:
                if name in PER_MESSAGE_FAULTS:
                    probabilities[name] = float(value)
                    if not 0 <= probabilities[name] <= 1:
                        raise ValueError
                elif name in COUNTED_FAULTS:
                    counts[name] = int(value or 1)
                elif name in TIMED_FAULTS:
                    late = float(value or 2.0)
                else:
                    if value:
                        raise ValueError
                    flags.add(name)
            except ValueError:
                raise ValueError(f"bad value {value!r} for fault {name!r}") from None
        return cls(probabilities, counts, frozenset(flags), late)


@dataclass
class FaultReport:
    """What the detector did, frame by frame, so a test can check the receiver's accounting."""

    frames_sent_ok: list[int] = field(default_factory=list)
    frames_lost_in_transit: list[int] = field(default_factory=list)
    frames_dropped_at_source: list[int] = field(default_factory=list)
    frames_in_bad_messages: list[int] = field(default_factory=list)  # attributable: the receiver can reject them
    frames_in_garbage: list[int] = field(default_factory=list)  # unattributable: the receiver sees them missing
    frames_duplicated: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)




class FaultInjector:
    """Draws the per-message faults of a plan and turns a frames message into what is sent."""

    def __init__(self, plan: FaultPlan, seed: int, max_message_bytes: int):
        self.plan, self.max_message_bytes = plan, max_message_bytes
        self.rng = np.random.default_rng(seed)
        self.report = FaultReport()

    def draw(self) -> str | None:
        for name in PER_MESSAGE_FAULTS:
            p = self.plan.probabilities.get(name, 0.0)
            if p and self.rng.random() < p:
                return name
        return None

    def apply(self, fault: str | None, parts: list, pixels: np.ndarray, ids: list[int]) -> list:
        """Messages to send instead of `parts`: (parts, frame ids, kind)."""
        if fault is None or fault == "reorder":
            return [(parts, ids, "ok")]
        if fault in ("drop", "source_drop"):
            return [(None, ids, fault)]
        if fault == "duplicate":
            return [(parts, ids, "ok"), (parts, ids, "duplicate")]
        header = json.loads(bytes(parts[0]))
        if fault == "truncate":
            pixel_bytes = bytes(parts[4])
            return [([parts[0], *parts[1:4], pixel_bytes[: len(pixel_bytes) // 2]], ids, "bad")]
        if fault == "garbage":
            return [([self.rng.bytes(int(self.rng.integers(1, 4096)))], ids, "garbage")]
        if fault == "wrong_shape":
            h, w = header["shape"]
            header["shape"] = [h // 2, w * 2]
            return [([encode_header(header), *parts[1:]], ids, "bad")]
        if fault == "wrong_dtype":
            wide = pixels.astype("<u4") if pixels.dtype.itemsize < 4 else pixels.astype("<u2")
            header["dtype"] = wide.dtype.str
            return [([encode_header(header), *parts[1:4], memoryview(np.ascontiguousarray(wide)).cast("B")], ids, "bad")]
        if fault == "oversize":
            padding = bytes(int(1.5 * self.max_message_bytes))
            return [([parts[0], *parts[1:4], padding], ids, "bad")]
        raise AssertionError(fault)

    def record(self, kind: str, ids: list[int]) -> None:
        report = self.report
        {"ok": report.frames_sent_ok, "drop": report.frames_lost_in_transit,
         "source_drop": report.frames_dropped_at_source, "bad": report.frames_in_bad_messages,
         "garbage": report.frames_in_garbage, "duplicate": report.frames_duplicated}[kind].extend(ids)

    def deliver(self, outgoing: list, send) -> tuple[int, int]:
        """Send (parts, ids, kind) messages with `send(parts) -> bool`, recording each frame's fate;
        returns (frames sent, frames dropped at source)."""
        sent = dropped = 0
        for parts, ids, kind in outgoing:
            if kind == "source_drop":
                self.record(kind, ids)
                dropped += len(ids)
            elif kind == "drop":  # lost in transit: the detector believes it sent them
                self.record(kind, ids)
                sent += len(ids)
            elif send(parts):
                self.record(kind, ids)
                sent += len(ids) if kind != "duplicate" else 0
            elif kind == "duplicate":  # the original copy went through: nothing is lost
                self.report.events.append(f"duplicate of frames {ids[0]}.. not sent (send timeout)")
            else:  # nobody took it within the send timeout: a real detector drops and says so
                self.report.frames_dropped_at_source.extend(ids)
                dropped += len(ids)
        return sent, dropped
