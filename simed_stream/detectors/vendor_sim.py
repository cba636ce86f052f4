"""What the DECTRIS, Merlin and Serval simulators share: a series (`SeriesSource`) streamed as a
detector that knows nothing of scan positions would stream it.

Each scan frame goes out at its detector frame index by the scan geometry — so frames before the
scan's start and flyback frames are sent too (filler frames), and an adapter configured with the
same geometry must put every frame back where it was. The overview image is written as a file
into `overview_dir` (the microscope's camera software does that), before the frames or after,
as the source says. Faults are deterministic, by detector frame index, so a test knows each
frame's fate.
"""

from __future__ import annotations

import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simed_stream.detectors.scan_map import ScanMap
from simed_stream.detectors.series_source import SeriesSource
from simed_stream.detectors.settings import ScanSync
from simed_stream.image_files import write_overview


class EncodedCache:
    """A frame's encoding (compressed, byte-swapped), kept for the next time the same pixels go
    out: a benchmark's detector sends a small pool of frames and must not be the bottleneck."""

    def __init__(self, size: int = 256):
        self.size, self._items = size, OrderedDict()

    def get(self, pixels: np.ndarray, encode) -> bytes:
        key = (pixels.dtype.str, pixels.shape, zlib.crc32(pixels))
        data = self._items.get(key)
        if data is None:
            data = self._items[key] = encode()
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


@dataclass(frozen=True)
class SimFaults:
    """By detector frame index: `truncate` (sent cut short), `garbage` (random bytes sent before it),
    `drop` (never sent); `stop_after` frames the simulator stops (`disconnect`: and drops the
    connection, no end); `extra_frames` more frames after the scan (the series is longer)."""

    truncate: frozenset[int] = frozenset()
    garbage: frozenset[int] = frozenset()
    drop: frozenset[int] = frozenset()
    stop_after: int | None = None
    disconnect: bool = False
    extra_frames: int = 0


@dataclass
class SimSeries:
    """One series on its way out, as the vendor formats need it."""

    series_id: str
    number: int  # the detector's own series counter
    frames: int  # detector frames it will announce
    sig_shape: tuple[int, int]
    dtype: np.dtype
    pixel_mask: np.ndarray | None = None  # for the formats that carry one (DECTRIS)
    sent: list[int] = field(default_factory=list)  # detector frame indices sent whole


class VendorSimulator(ABC):
    def __init__(self, rate_fps: float | str = "max", overview_dir: Path | None = None,
                 flyback_frames: int = 0, start_frame: int = 0, faults: SimFaults = SimFaults(),
                 overview_suffix: str = ".mrc"):
        self.rate_fps, self.overview_dir = rate_fps, overview_dir
        self.flyback_frames, self.start_frame, self.faults = flyback_frames, start_frame, faults
        self.overview_suffix = overview_suffix
        self.series_count = 0
        self.rng = np.random.default_rng(0)
        self.last: SimSeries | None = None

    # -- what each vendor implements
    @abstractmethod
    def begin_series(self, series: SimSeries) -> None: ...

    @abstractmethod
    def send_frame(self, series: SimSeries, index: int, pixels: np.ndarray, truncate: bool) -> None: ...

    @abstractmethod
    def send_garbage(self, data: bytes) -> None: ...

    @abstractmethod
    def end_series(self, series: SimSeries, complete: bool) -> None: ...

    # -- streaming
    def run(self, sources, loop: bool = False) -> None:
        """Stream each source (a `SeriesSource` or a function making one), again and again with `loop`."""
        while True:
            for make in sources:
                self.stream(make() if callable(make) else make)
            if not loop:
                return

    def scan_map(self, source: SeriesSource) -> ScanMap:
        scan = source.start_fields["scan"]
        return ScanMap(ScanSync(shape=tuple(scan["nav_shape"]), frames_per_position=scan["frames_per_position"],
                                pattern=scan["pattern"], flyback_frames=self.flyback_frames,
                                start_frame=self.start_frame))

    def stream(self, source: SeriesSource) -> SimSeries:
        scan = self.scan_map(source)
        detector = source.start_fields["detector"]
        frames = scan.detector_frames_min + self.faults.extra_frames
        if self.faults.stop_after is not None and not self.faults.disconnect:
            frames = min(frames, self.faults.stop_after)  # a shorter series, announced as such
        self.series_count += 1
        series = SimSeries(source.series_id, self.series_count, frames, tuple(detector["sig_shape"]),
                           vendor_dtype(np.dtype(detector["dtype"])), source.pixel_mask)
        self.last = series
        self.begin_series(series)
        next_index, started, overview = 0, time.monotonic(), None
        for htype, _recorded, payload in source.messages:
            if htype == "overview_image":
                overview = payload
                if payload.get("acquired") == "before":
                    self.write_overview(payload, source.series_id)
                    overview = None
            elif htype == "frames":
                ids, _yx, _t, pixels = payload
                indices = scan.detector_frame(np.asarray(ids, np.int64))
                for index, frame in zip(indices.tolist(), pixels):
                    next_index = self._until(series, next_index, index, frame, started)
                    if next_index is None:
                        return self._stop(series)
                    next_index = self._one(series, index, frame, started)
                    if next_index is None:
                        return self._stop(series)
        filler = np.zeros(series.sig_shape, series.dtype)
        if self._until(series, next_index, frames, filler, started) is None:
            return self._stop(series)
        self.end_series(series, complete=True)
        if overview is not None:
            self.write_overview(overview, source.series_id)
        return series

    def _until(self, series: SimSeries, index: int, stop: int, like: np.ndarray, started: float) -> int | None:
        """Filler frames (before the scan, flyback, after it) from `index` up to `stop`."""
        filler = np.zeros_like(like, dtype=series.dtype)
        while index < stop:
            if self._one(series, index, filler, started) is None:
                return None
            index += 1
        return index

    def _one(self, series: SimSeries, index: int, frame: np.ndarray, started: float) -> int | None:
        faults = self.faults
        if faults.stop_after is not None and index >= faults.stop_after or index >= series.frames:
            return None
        self._pace(index, started)
        if index in faults.garbage:
            self.send_garbage(self.rng.bytes(int(self.rng.integers(16, 2048))))
        if index not in faults.drop:
            truncate = index in faults.truncate
            self.send_frame(series, index, to_vendor(frame, series.dtype), truncate)
            if not truncate:
                series.sent.append(index)
        return index + 1

    def _stop(self, series: SimSeries) -> SimSeries:
        self.end_series(series, complete=not self.faults.disconnect)
        return series

    def _pace(self, index: int, started: float) -> None:
        if self.rate_fps in ("max", "recorded"):
            return
        delay = started + index / float(self.rate_fps) - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def write_overview(self, overview: dict, series_id: str) -> None:
        if self.overview_dir is None:
            return
        name = f"overview-{self.series_count:04d}{self.overview_suffix}"
        write_overview(Path(self.overview_dir) / name, overview["image"], overview["pixel_size_A"],
                       np.asarray(overview["affine"], float))


def vendor_dtype(dtype: np.dtype) -> np.dtype:
    """Vendor formats carry unsigned counts: float frames (a simulated scan's) go as uint32."""
    return np.dtype("<u4") if dtype.kind == "f" else dtype.newbyteorder("<")


def to_vendor(frame: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if frame.dtype.kind == "f":
        if not (np.all(frame >= 0) and np.all(frame < 2**32) and np.all(frame == np.round(frame))):
            raise ValueError("float frames must hold whole counts below 2**32 to go out as integers")
    return np.ascontiguousarray(frame, dtype=dtype)
