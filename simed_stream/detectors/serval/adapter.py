"""The receiver's side of ASI Serval's frame streaming (a destination `Format: jsonimage` over
TCP): per frame one JSON header line, then the pixels.

Headers differ between Serval versions; both are read:
- 3.x / 4.x: {"width", "height", "pixelFormat": "uint8" | "uint16" | "uint32", "frameNumber",
  "timeAtFrame", ...} — the pixel count follows from width × height × the format;
- older: {"timeAtFrame", "frameNumber", "measurementID", "dataSize", "bitDepth", "width", "height"}.
The byte order of the pixels differs between installations (`serval.byte_order`, big by default).
Serval sends no series id and, here, no frame count: a series is one measurement on one
connection. It begins with a connection's first frame and ends when the frame number starts
again (or `measurementID` changes), when the connection closes, or when the scan's frames are in
and the wire has been quiet for half a second; frames after the scan's last are extra.
"""

from __future__ import annotations

import json
import time

import numpy as np

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.series_builder import VendorSeries
from simed_stream.detectors.settings import SourceSettings
from simed_stream.detectors.vendor_adapter import TcpAdapter

MAX_HEADER_BYTES = 64 << 10
FORMATS = {"uint8": "u1", "uint16": "u2", "uint32": "u4"}
BIT_DEPTHS = {8: "u1", 16: "u2", 32: "u4"}
QUIET_END_S = 0.5


def frame_layout(header: dict) -> tuple[int, int, str, int]:
    """(height, width, dtype kind+size, pixel bytes) of a jsonimage header; ValueError if unusable."""
    width, height = header.get("width"), header.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in (width, height)):
        raise ValueError(f"width {width!r} and height {height!r} must be 1..65536")
    if "pixelFormat" in header:
        kind = FORMATS.get(str(header["pixelFormat"]).lower())
    else:
        depth = header.get("bitDepth")
        kind = BIT_DEPTHS.get(depth) if isinstance(depth, int) else None  # a list or dict is no key
    if kind is None:
        raise ValueError(f"pixel format {header.get('pixelFormat', header.get('bitDepth'))!r} is not read "
                         "(uint8, uint16, uint32)")
    nbytes = width * height * int(kind[1])
    if "dataSize" in header and header["dataSize"] != nbytes:
        raise ValueError(f"dataSize {header['dataSize']!r} is not {width}×{height}×{kind[1]} bytes")
    return height, width, kind, nbytes


def _stamp_ns(value) -> int | None:
    """`timeAtFrame` (ns) when it is a usable time: a positive number below 2**63 (not inf, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 2**63:
        return None
    return int(value)


class ServalAdapter(TcpAdapter):
    name = "serval"

    def __init__(self, settings: SourceSettings, max_message_bytes: int):
        super().__init__(settings, max_message_bytes)
        self.order = ">" if settings.serval.byte_order == "big" else "<"
        self.last_number: int | None = None
        self.measurement = None

    def _closed(self) -> list[Decoded]:
        return self._end_of("the connection closed", discard=True)

    def _parse(self, quiet: bool) -> list[Decoded]:
        """A frame is taken once the next header's `{` follows its pixels (or the wire is quiet);
        one that is not followed so is searched for a header inside it — only then: it costs."""
        events, stream = [], self.stream
        while stream.available():
            if bytes(stream.view(0, 1)) != b"{":
                events += self._resync("bytes that are no jsonimage header")
                continue
            newline = stream.find(b"\n", 0, MAX_HEADER_BYTES)
            if newline < 0:
                if stream.available() >= MAX_HEADER_BYTES:
                    events += self._resync(f"a header line longer than {MAX_HEADER_BYTES} bytes")
                    continue
                break
            try:
                header = json.loads(bytes(stream.view(0, newline)))
                height, width, kind, nbytes = frame_layout(header)
            except (ValueError, RecursionError, AttributeError) as error:
                events += self._resync(f"an unusable header ({str(error)[:200]})")
                continue
            if nbytes > self.max_message_bytes:
                events += self._resync(f"a {nbytes}-byte frame (the limit is {self.max_message_bytes})")
                continue
            start = newline + 1
            end, available = start + nbytes, stream.available()
            followed = available > end and bytes(stream.view(end, 1)) == b"{"
            cut = self._next_header(start, nbytes) if not followed and (quiet or available > end) else None
            if cut is None and (available < end or not (followed or quiet or available > end)):
                break
            pixels = None if cut is not None else stream.view(start, nbytes)
            events += self._frame(header, pixels, (height, width), kind)
            stream.consume(cut if cut is not None else start + nbytes)
        return events + (self.builder.flush() if quiet else self.builder.flush_if_due())

    def _next_header(self, start: int, nbytes: int) -> int | None:
        """Where a frame cut short ends: a complete header line inside its pixels (checked, not guessed)."""
        at = start
        for _ in range(16):
            at = self.stream.find(b'{"', at, start + nbytes - at)
            if at < 0:
                return None
            newline = self.stream.find(b"\n", at, MAX_HEADER_BYTES)
            try:
                header = json.loads(bytes(self.stream.view(at, newline - at))) if newline > at else None
                if isinstance(header, dict):
                    frame_layout(header)
                    return at
            except (ValueError, RecursionError):
                pass
            at += 2
        return None

    def _frame(self, header: dict, pixels: memoryview | None, shape: tuple[int, int], kind: str) -> list[Decoded]:
        number = header.get("frameNumber")
        number = number if isinstance(number, int) and number >= 0 else None
        events = self._series_for(header, number)
        if number is None:
            return events + self.builder.reject(f"Serval: frameNumber {header.get('frameNumber')!r} is no frame number")
        self.last_number, self.last_frame_s = number, time.monotonic()
        if pixels is None:
            return events + self.builder.reject(f"Serval frame {number}: cut short (the next header came early)", number)
        array = np.frombuffer(pixels, self.order + kind).reshape(shape)  # a view: the builder copies it
        return events + self.builder.frame(number, array, _stamp_ns(header.get("timeAtFrame")))

    def _series_for(self, header: dict, number: int | None) -> list[Decoded]:
        measurement = header.get("measurementID")
        events = []
        restarted = number is not None and self.last_number is not None and number <= self.last_number
        if self.builder.open and (restarted or measurement != self.measurement):
            events += self._end_of("a new measurement began")
        if not self.builder.open:
            self.measurement = measurement
            name = f"serval-{measurement}" if isinstance(measurement, (int, str)) and str(measurement) \
                else time.strftime("serval-%Y%m%d-%H%M%S")
            events += self.builder.begin(VendorSeries(name, "ASI (Serval)", "Serval jsonimage",
                                                      pixel_pitch_um=55.0, header={"first_header": header}))
        return events

    def _quiet_end(self) -> list[Decoded]:
        series = self.builder.series
        if series is None or time.monotonic() - self.last_frame_s < QUIET_END_S \
                or series.last_frame + 1 < self.builder.map.detector_frames_min:
            return []
        return self._end_of("")

    def _end_of(self, why: str, discard: bool = False) -> list[Decoded]:
        torn = self.stream.discard() if discard else 0
        events = self.builder.reject(f"Serval: the connection closed inside a frame ({torn} bytes)") if torn else []
        series = self.builder.series
        if series is not None:
            whole = series.last_frame + 1 >= self.builder.map.detector_frames_min
            events += self.builder.end("complete" if whole else "aborted",
                                       None if whole else f"{why} after frame {series.last_frame + 1}")
        self.last_number, self.measurement = None, None
        return events

    def _resync(self, what: str) -> list[Decoded]:
        at = self.stream.find(b'{"', 1)
        skipped = at if at > 0 else self.stream.available()
        self.stream.consume(skipped)
        return self.builder.reject(f"Serval: {skipped} bytes skipped: {what}")
