"""The receiver's side of a Quantum Detectors Merlin (MerlinEM, Merlin 4R): its TCP data port
(6342 by default), read as `MPX,<10-digit length>,<payload>` messages.

The payload of the first is the acquisition header (`HDR,` … `End`: `Frames in Acquisition
(Number)`, `Counter Depth (number)`, …); each frame's is an `MQ1,` header (sequence number from
1, header size, chips, width, height, pixel type, layout, …, `MQ1A`, time stamp, shutter,
counter depth) followed by the pixels, big-endian: U08 for 1- and 6-bit counters, U16 for 12-bit,
U32 for 24-bit. There is no end message: the series ends with its frame numbered `Frames in
Acquisition` (or, when that is 0 — continuous — after the scan's frames and a quiet wire). Raw (R64) mode is not
read: set the Merlin to its default, non-raw output.

A message is checked before use: a length that is no number, a payload of another kind, a
frame cut short (the next `MPX,` inside it) is rejected — with its frame when its header says
which — and reading goes on at the next `MPX,`.
"""

from __future__ import annotations

import re
import time

import numpy as np

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.series_builder import VendorSeries
from simed_stream.detectors.settings import SourceSettings
from simed_stream.detectors.vendor_adapter import TcpAdapter

PREFIX_BYTES = 15
PREFIX = re.compile(rb"MPX,(\d{10}),")
PIXEL_TYPES = {"U08": (">u1",), "U16": (">u2",), "U32": (">u4",)}
QUIET_END_S = 0.5


def parse_acquisition_header(payload: bytes) -> dict[str, str]:
    """`HDR,` text: one `key:\\tvalue` a line (keys keep their "(...)" hints), until `End`."""
    fields = {}
    for line in payload.decode("latin-1").splitlines():
        if line.startswith(("HDR", "End")) or "\t" not in line:
            continue
        key, value = line.split("\t", 1)
        fields[key.strip().rstrip(":").strip()] = value.strip()
    return fields


def parse_frame_header(payload: memoryview) -> dict:
    """The MQ1 header's fields that matter; ValueError when it is not one."""
    head = bytes(payload[:64]).split(b",")
    if len(head) < 8 or head[0] != b"MQ1":
        raise ValueError("not an MQ1 frame header")
    size = int(head[2])
    if not 0 < size <= 65536 or size > len(payload):
        raise ValueError(f"frame header size {size} does not fit a {len(payload)}-byte message")
    fields = bytes(payload[:size]).rstrip(b"\x00 ").decode("latin-1").split(",")
    depth = None
    if "MQ1A" in fields and len(fields) > fields.index("MQ1A") + 3:
        depth = int(fields[fields.index("MQ1A") + 3].strip() or 0) or None
    return {"sequence": int(fields[1]), "header_bytes": size, "chips": int(fields[3]), "width": int(fields[4]),
            "height": int(fields[5]), "pixel_type": fields[6].strip(), "layout": fields[7].strip(),
            "counter_depth": depth}


class MerlinAdapter(TcpAdapter):
    name = "merlin"

    def __init__(self, settings: SourceSettings, max_message_bytes: int):
        super().__init__(settings, max_message_bytes)
        self.acquisition: dict[str, str] = {}
        self.announced: int | None = None
        self.first_sequence = 1  # the sequence number of the series' first frame
        self.series_count = 0

    # -- messages
    def _parse(self, quiet: bool) -> list[Decoded]:
        """Each message is taken once the next one's `MPX,` follows it (or the wire is quiet): one
        that does not end there is searched for a cut — the search costs, so only then."""
        events, stream = [], self.stream
        while stream.available() >= PREFIX_BYTES:
            match = PREFIX.fullmatch(bytes(stream.view(0, PREFIX_BYTES)))
            if match is None:
                events += self._resync("bytes that are no MPX message")
                continue
            length = int(match.group(1)) - 1
            if not 0 < length <= self.max_message_bytes:
                events += self._resync(f"an MPX message of {length} bytes (the limit is {self.max_message_bytes})")
                continue
            end = PREFIX_BYTES + length
            followed = stream.available() >= end + 4 and bytes(stream.view(end, 4)) == b"MPX,"
            if not followed and (quiet or stream.available() >= end + 4):
                inner = stream.find(b"MPX,", PREFIX_BYTES, length)
                if inner >= 0 and PREFIX.match(bytes(stream.view(inner, PREFIX_BYTES))):
                    events += self._message(stream.view(PREFIX_BYTES, inner - PREFIX_BYTES), truncated=True)
                    stream.consume(inner)
                    continue
            if stream.available() < end or not (followed or quiet or stream.available() >= end + 4):
                break
            events += self._message(stream.view(PREFIX_BYTES, length))
            stream.consume(end)
        return events + (self.builder.flush() if quiet else self.builder.flush_if_due())

    def _resync(self, what: str) -> list[Decoded]:
        at = self.stream.find(b"MPX,", 1)
        skipped = at if at > 0 else self.stream.available()
        self.stream.consume(skipped)
        return self.builder.reject(f"Merlin: {skipped} bytes skipped: {what}")

    def _message(self, payload: memoryview, truncated: bool = False) -> list[Decoded]:
        kind = bytes(payload[:4])
        if kind == b"HDR," and not truncated:
            return self._acquisition(bytes(payload))
        if kind == b"MQ1,":
            return self._frame(payload, truncated)
        what = "a truncated message" if truncated else f"an MPX message starting {kind!r}"
        return self.builder.reject(f"Merlin: {what}")

    def _acquisition(self, payload: bytes) -> list[Decoded]:
        self.acquisition = fields = parse_acquisition_header(payload)
        announced = fields.get("Frames in Acquisition (Number)", "")
        # isascii: the header is read as Latin-1, where '²' is a digit to isdigit but not to int()
        digits = announced.isascii() and announced.isdigit()
        self.announced = int(announced) if digits and int(announced) > 0 else None
        self.first_sequence = 1
        return self._begin("")

    def _begin(self, note: str) -> list[Decoded]:
        self.series_count += 1
        stamp = self.acquisition.get("Time and Date Stamp (day, mnth, yr, hr min s)", "")
        name = re.sub(r"[^0-9]", "", stamp) or time.strftime("%Y%m%d%H%M%S")
        events = self.builder.begin(VendorSeries(
            f"merlin-{name}", f"Merlin {self.acquisition.get('Readout System', '')}".strip(),
            "Merlin MPX", frames_announced=self.announced, pixel_pitch_um=55.0, header=dict(self.acquisition)))
        if note:
            self.builder.series.notes.append(note)
        return events

    def _frame(self, payload: memoryview, truncated: bool) -> list[Decoded]:
        try:
            header = parse_frame_header(payload)
        except (ValueError, IndexError) as error:
            return self.builder.reject(f"Merlin: unreadable frame header ({error})")
        events = []
        if not self.builder.open:  # joined mid-acquisition, or a continuous acquisition's next scan
            self.first_sequence = self.first_sequence if self.announced is None and self.series_count else 1
            events += self._begin("no acquisition header (HDR) before this series' first frame")
        index = header["sequence"] - self.first_sequence
        try:
            pixels = self._pixels(payload, header, truncated)
            events += self.builder.frame(index, pixels)
        except ValueError as error:
            events += self.builder.reject(f"Merlin frame {header['sequence']}: {error}", index)
        self.last_frame_s = time.monotonic()
        return events + self._maybe_end(index)

    def _pixels(self, payload: memoryview, header: dict, truncated: bool) -> np.ndarray:
        types = PIXEL_TYPES.get(header["pixel_type"])
        if types is None:
            raise ValueError(f"pixel type {header['pixel_type']!r} is not read (U08, U16, U32; raw R64 is not)")
        h, w = header["height"], header["width"]
        expected = h * w * np.dtype(types[0]).itemsize
        data = payload[header["header_bytes"]:]
        if truncated or len(data) != expected:
            raise ValueError(f"{len(data)} pixel bytes, a {w}×{h} {header['pixel_type']} frame has {expected}"
                             + (" (cut short)" if truncated else ""))
        return np.frombuffer(data, types[0]).reshape(h, w)  # a view: the builder copies it, little-endian

    # -- ends
    def _maybe_end(self, index: int) -> list[Decoded]:
        frames = self.announced
        if frames is None:
            if index + 1 < self.builder.map.detector_frames_max:
                return []
            self.first_sequence += index + 1  # continuous: the next frame starts the next scan
            return self.builder.end("complete")
        # Only the acquisition's own last frame ends it. A frame numbered beyond it (a garbled
        # sequence number) is counted beyond the scan and the series goes on: ending there would
        # mark the series complete and put the intact frames that follow into a new series without
        # its header, lost to this one. Nothing follows a true last frame in order, so waiting
        # costs nothing; an acquisition that never sends it ends at the next HDR or the close.
        return self.builder.end("complete") if index + 1 == frames else []

    def _quiet_end(self) -> list[Decoded]:
        series = self.builder.series
        if series is None or self.announced is not None or time.monotonic() - self.last_frame_s < QUIET_END_S:
            return []
        if series.last_frame + 1 >= self.builder.map.detector_frames_min:
            self.first_sequence += series.last_frame + 1
            return self.builder.end("complete")
        return []

    def _closed(self) -> list[Decoded]:
        torn = self.stream.discard()
        events = self.builder.reject(f"Merlin: the connection closed inside a message ({torn} bytes)") if torn else []
        if self.builder.open:
            last = self.builder.series.last_frame + 1
            events += self.builder.end("aborted", f"the detector closed the connection after frame {last}"
                                       + (f" of {self.announced}" if self.announced else ""))
        return events
