"""A vendor detector's series as the receiver's events, the same for every adapter.

The adapter says what its wire format says — a series began (with what the detector announced),
frame k arrived with these pixels, frame k was unreadable, the series ended — and the builder
does the rest: places each frame on the scan (`scan_map.py`), batches frames into frames
messages, counts frames outside the scan (skipped: before the start or flyback; extra: beyond
the last line) and writes it all as simed-stream/1 messages, checked by `protocol.decode` like
any that come over the wire. So the capture of a DECTRIS, Merlin or Serval series is an ordinary
capture: its headers are simed-stream/1, replayable and reprocessable like every other.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.scan_map import EXTRA, IN_SCAN, ScanMap
from simed_stream.detectors.settings import SourceSettings
from simed_stream.image_files import read_pixel_mask
from simed_stream.protocol import (MAX_SIDE_PX, ProtocolError, decode, encode_frames, encode_series_end,
                                   encode_series_start)

BIT_DEPTHS = {"|u1": 8, "<u2": 16, "<u4": 32, "<f4": 32}


@dataclass
class VendorSeries:
    """What a detector announced at the start of a series (what it did not say stays None)."""

    series_id: str
    model: str
    protocol: str  # e.g. "DECTRIS stream v1"
    unique_id: str | None = None
    frames_announced: int | None = None
    sig_shape: tuple[int, int] | None = None
    dtype: str | None = None  # a protocol.FRAME_DTYPES key
    bit_depth: int | None = None
    pixel_pitch_um: float | None = None
    pixel_mask: np.ndarray | None = None
    header: dict = field(default_factory=dict)  # the vendor's own header, for the record


@dataclass
class _Open:
    vendor: VendorSeries
    started: bool = False
    frames_seen: int = 0  # detector frames of this series, whatever became of them
    skipped: int = 0
    extra: int = 0
    last_frame: int = -1
    notes: list[str] = field(default_factory=list)
    early_rejections: list[ProtocolError] = field(default_factory=list)  # before the start could be sent
    batch: np.ndarray | None = None  # frames waiting to go as one message, copied in as they come
    batch_ids: list[int] = field(default_factory=list)
    batch_yx: list[tuple[int, int]] = field(default_factory=list)
    batch_t: list[int] = field(default_factory=list)
    batch_since: float = 0.0  # monotonic: when the batch's first frame came


class SeriesBuilder:
    """One adapter's series, one at a time; its own msg_seq counts the messages it writes."""

    def __init__(self, settings: SourceSettings, max_message_bytes: int, batch_frames: int = 64,
                 max_batch_wait_s: float = 0.05):
        self.settings, self.max_message_bytes = settings, max_message_bytes
        self.batch_frames, self.max_batch_wait_s = batch_frames, max_batch_wait_s
        self.map = ScanMap(settings.scan)
        self.msg_seq = 0
        self.series: _Open | None = None
        self._used_ids: set[str] = set()
        # read now: a bad mask file is a bad setting, said when the receiver starts
        self._mask = read_pixel_mask(settings.pixel_mask) if settings.pixel_mask is not None else None

    @property
    def open(self) -> bool:
        return self.series is not None

    # -- what the adapter says
    def begin(self, vendor: VendorSeries) -> list[Decoded]:
        """A new series; one still open ends first (its detector moved on without an end)."""
        events = self.end("incomplete", "the detector started another series before this one ended") \
            if self.series is not None else []
        vendor.series_id = self._unique(_one_token(vendor.series_id))
        self.series = _Open(vendor)
        if vendor.sig_shape is not None and vendor.dtype is not None:
            events += self._start()
        return events

    def frame(self, index: int, pixels: np.ndarray, timestamp_ns: int | None = None) -> list[Decoded]:
        """Detector frame `index` (0-based in its series). `pixels` may be a view in the wire's byte
        order: it is copied at once, into the batch, as the little-endian simed dtype."""
        if pixels.ndim != 2 or not all(0 < side <= MAX_SIDE_PX for side in pixels.shape):
            # an empty or absurd image (a broken header's shape) cannot be a frame of any series
            return self.reject(f"{self.series.vendor.protocol} frame {index}: shape {list(pixels.shape)} is not "
                               f"two sides of 1..{MAX_SIDE_PX} pixels", index)
        series = self.series
        series.frames_seen += 1
        series.last_frame = max(series.last_frame, index)
        kind, frame_id, y, x = self.map.place_one(index)
        if kind != IN_SCAN:
            if kind == EXTRA:
                series.extra += 1
            else:
                series.skipped += 1
            return []
        dtype = pixels.dtype.newbyteorder("<") if pixels.dtype.itemsize > 1 else pixels.dtype
        events = []
        if not series.started:
            series.vendor.sig_shape = series.vendor.sig_shape or tuple(pixels.shape)
            series.vendor.dtype = series.vendor.dtype or dtype.str
            events += self._start()
        batch = series.batch
        if batch is not None and (frame_id in series.batch_ids or batch.shape[1:] != pixels.shape
                                  or batch.dtype != dtype):
            events += self._flush()
        if series.batch is None:
            size = max(1, min(self.batch_frames, self.max_message_bytes // 2 // max(1, pixels.nbytes)))
            series.batch = np.empty((size, *pixels.shape), dtype)
            series.batch_since = time.monotonic()
        series.batch[len(series.batch_ids)] = pixels
        series.batch_ids.append(frame_id)
        series.batch_yx.append((y, x))
        # a detector's stamp outside uint64 (a garbled header) is no time: the arrival time stands in
        series.batch_t.append(timestamp_ns if timestamp_ns is not None and 0 < timestamp_ns < 2**64
                              else time.time_ns())
        if len(series.batch_ids) == len(series.batch):
            events += self._flush()
        return events

    def reject(self, reason: str, index: int | None = None) -> list[Decoded]:
        """A frame (or message) the detector sent that cannot be read; `index` when it is known."""
        series = self.series
        if series is None:
            return [Decoded(error=ProtocolError(reason))]
        ids = None
        if index is not None:
            series.frames_seen += 1
            placed = self.map.place(np.array([index]))
            if placed.kind[0] == IN_SCAN:
                ids = placed.frame_ids
            elif placed.kind[0] == EXTRA:
                series.extra += 1
            else:
                series.skipped += 1
        error = ProtocolError(reason, series.vendor.series_id, ids)
        if not series.started:
            series.early_rejections = (series.early_rejections + [error])[-1000:]
            return []
        return self._flush() + [Decoded(error=error)]

    def flush(self) -> list[Decoded]:
        """The frames batched so far, as one message (the adapter calls it when the wire goes quiet)."""
        return self._flush() if self.series is not None else []

    def flush_if_due(self) -> list[Decoded]:
        """The batch, once its first frame has waited `max_batch_wait_s`: a steady stream goes in
        full batches, and no frame waits long for the rest of its batch."""
        series = self.series
        if series is None or not series.batch_ids or time.monotonic() - series.batch_since < self.max_batch_wait_s:
            return []
        return self._flush()

    def end(self, status: str = "complete", note: str | None = None) -> list[Decoded]:
        """The series is over: its last frames, then series_end with what fell outside the scan."""
        series = self.series
        if series is None:
            return []
        if note:
            series.notes.append(note)
        events = self._flush()
        if not series.started:
            if series.vendor.sig_shape is None:  # not one frame: there is nothing to capture
                self.series = None
                return [Decoded(error=ProtocolError(
                    f"{series.vendor.protocol} series {series.vendor.series_id} ended before any frame of the "
                    f"scan arrived ({series.frames_seen} detector frame(s)); nothing to capture"))]
            events += self._start()
        series.notes += self._length_notes(series)
        end_status = status if status in ("complete", "aborted", "error") else "aborted"
        parts = encode_series_end(series.vendor.series_id, self._seq(), end_status, series.frames_seen, 0,
                                  frames_skipped=series.skipped, frames_beyond_scan=series.extra,
                                  notes=series.notes[-100:])
        events.append(self._decoded(parts))
        self.series = None
        return events

    # -- messages
    def _start(self) -> list[Decoded]:
        series = self.series
        series.started = True
        if series.vendor.pixel_mask is None and self.settings.pixel_mask is not None:
            series.vendor.pixel_mask = self._configured_mask(series)
        elif series.vendor.pixel_mask is not None and series.vendor.pixel_mask.shape != tuple(series.vendor.sig_shape):
            # the detector's own mask, checked against the frames it sends, not against what it
            # claims: a mismatched mask would make the series start unreadable and lose the series
            series.notes.append(f"the detector's pixel mask is {list(series.vendor.pixel_mask.shape)}, the frames "
                                f"{list(series.vendor.sig_shape)}: not used")
            series.vendor.pixel_mask = None
        parts = encode_series_start(series.vendor.series_id, self._seq(), self._start_fields(series.vendor),
                                    series.vendor.pixel_mask)
        events = [self._decoded(parts)]
        events += [Decoded(error=error) for error in series.early_rejections]
        series.early_rejections = []
        return events

    def _start_fields(self, vendor: VendorSeries) -> dict:
        sync, (h, w) = self.settings.scan, vendor.sig_shape
        return {
            "unique_id": vendor.unique_id or uuid.uuid4().hex,
            "detector": {"model": vendor.model, "sig_shape": [int(h), int(w)], "dtype": vendor.dtype,
                         "bit_depth": int(vendor.bit_depth or BIT_DEPTHS.get(vendor.dtype, 0)),
                         "pixel_pitch_um": float(vendor.pixel_pitch_um or 0.0)},
            "scan": {"nav_shape": [self.map.ny, self.map.nx], "pattern": sync.pattern,
                     "frames_per_position": self.map.per_position, "dwell_s": sync.dwell_s, "step_A": sync.step_A,
                     "rotation_deg": sync.rotation_deg, "frames_expected": self.map.frames_expected,
                     "flyback_frames": sync.flyback_frames, "start_frame": sync.start_frame},
            "optics": self.settings.optics.header(),
            "microscope": {},
            "trigger_mode": "external", "encoding": "raw", "user_data": {},
            "source": {"kind": self.settings.source, "protocol": vendor.protocol,
                       "endpoint": self.settings.data_endpoint, "frames_announced": vendor.frames_announced,
                       "header": vendor.header},
        }

    def _configured_mask(self, series: _Open) -> np.ndarray | None:
        if self._mask.shape != tuple(series.vendor.sig_shape):
            series.notes.append(f"pixel mask {self.settings.pixel_mask} is {list(self._mask.shape)}, the frames "
                                f"{list(series.vendor.sig_shape)}: not used")
            return None
        return self._mask

    def _flush(self) -> list[Decoded]:
        series = self.series
        if not series.batch_ids:
            return []
        n = len(series.batch_ids)
        ids, yx = np.array(series.batch_ids, np.uint64), np.array(series.batch_yx, np.int32)
        stamps, pixels = np.array(series.batch_t, np.uint64), series.batch[:n]
        series.batch, series.batch_ids, series.batch_yx, series.batch_t = None, [], [], []
        return [self._decoded(encode_frames(series.vendor.series_id, self._seq(), ids, yx, stamps, pixels))]

    def _decoded(self, parts: list) -> Decoded:
        """The message as the receiver would take it off the wire: checked by `protocol.decode`."""
        try:
            return Decoded(decode(parts, self.max_message_bytes), bytes(parts[0]))
        except ProtocolError as error:
            return Decoded(error=error)

    def _length_notes(self, series: _Open) -> list[str]:
        notes = []
        announced, scan = series.vendor.frames_announced, self.map
        if announced and not scan.detector_frames_min <= announced <= scan.detector_frames_max:
            notes.append(f"the detector announced {announced} frames; the {scan.describe()}")
        if series.extra:
            notes.append(f"{series.extra} detector frame(s) after the scan's last (series longer than the scan)")
        if series.last_frame + 1 < scan.detector_frames_min:
            notes.append(f"the series ended after detector frame {series.last_frame + 1}; the {scan.describe()}")
        return notes

    def _seq(self) -> int:
        self.msg_seq += 1
        return self.msg_seq - 1

    def _unique(self, series_id: str) -> str:
        candidate, n = series_id, 1
        while candidate in self._used_ids:
            n += 1
            candidate = f"{series_id}-{n}"
        self._used_ids.add(candidate)
        if len(self._used_ids) > 100_000:
            self._used_ids.clear()
        return candidate


MAX_SERIES_ID_CHARS = 80


def _one_token(series_id: str) -> str:
    """A vendor's series id as one printable token: it is built from whatever the detector sent
    (a garbled header's number may be a list, an array, a megabyte of text), and it appears in
    every message, log line and capture name of the series."""
    text = "".join(c if c.isprintable() and not c.isspace() else "_" for c in str(series_id))
    return text[:MAX_SERIES_ID_CHARS] or "series"
