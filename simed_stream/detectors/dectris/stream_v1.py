"""DECTRIS stream v1 ("legacy"): JSON parts and binary blobs, read part by part.

A series is `dheader-1.0` {series, header_detail} (then, unless the detail is "none", the
detector configuration as a JSON part; with "all" also flatfield, pixel mask and count-rate
table, each a header part and a blob), per image `dimage-1.0` {series, frame, hash},
`dimage_d-1.0` {shape [x, y], type, encoding, size}, the blob, `dconfig-1.0` {start_time,
stop_time, real_time (ns)}, and `dseries_end-1.0` {series}. Parts are dispatched on their
`htype`, not on how they were grouped into ZeroMQ messages: the DCU sends a header and its
configuration as one multipart message, other senders as several. Encodings: `bs32-lz4<`,
`bs16-lz4<`, `bs8-lz4<` (bitshuffle + LZ4, HDF5 framing), `lz4<` (an LZ4 block) and `<` (raw),
all little-endian.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.dectris.compression import (CompressionError, decompress_hdf5,
                                                        decompress_lz4_block)
from simed_stream.detectors.series_builder import SeriesBuilder, VendorSeries

log = logging.getLogger(__name__)
PIXEL_TYPES = {"uint8": "|u1", "uint16": "<u2", "uint32": "<u4"}
ENCODINGS = ("bs32-lz4<", "bs16-lz4<", "bs8-lz4<", "lz4<", "<")
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_BYTES = 256 << 20
_BLOB_HEADERS = {"dflatfield-1.0": "flatfield", "dpixelmask-1.0": "pixel_mask", "dcountrate_table-1.0": "countrate"}


def header_of(part) -> dict | None:
    """A JSON object part, or None (a blob, or garbage)."""
    if len(part) > MAX_HEADER_BYTES or not len(part) or bytes(part[:1]) != b"{":
        return None
    try:
        value = json.loads(bytes(part))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class StreamV1:
    """The part-by-part state of one DECTRIS stream v1 connection."""

    def __init__(self, builder: SeriesBuilder):
        self.builder = builder
        self.expect: str | None = None  # "config", "dimage_d", "blob", or a _BLOB_HEADERS value
        self.pending_series: dict | None = None  # a dheader waiting for its configuration
        self.image: dict = {}  # the image being read: its dimage and dimage_d headers
        self.mask: np.ndarray | None = None
        self.appendix_ok = False  # a part without htype may follow a header or dconfig in one message

    def message_start(self) -> None:
        self.appendix_ok = False

    def part(self, part) -> list[Decoded]:
        if self.expect == "blob":
            self.expect = None
            return self._frame(part)
        if self.expect in _BLOB_HEADERS.values():
            return self._detail_blob(part)
        header = header_of(part)
        htype = header.get("htype") if header is not None else None
        if self.expect == "config":
            self.expect = None
            if header is not None and htype is None:
                return self._begin(header)
            events = self._begin({})
            return events + self.part(part)
        if self.expect == "dimage_d" and htype != "dimage_d-1.0":
            self.expect = None
            events = self._reject_image("its dimage_d-1.0 part is missing")
            return events + self.part(part)
        return self._dispatch(header, htype, part)

    def _dispatch(self, header: dict | None, htype: str | None, part) -> list[Decoded]:
        if htype is not None and not isinstance(htype, str):
            return self.builder.reject(f"DECTRIS stream v1: htype {str(htype)[:80]!r} is not a string")
        if htype == "dheader-1.0":
            events = self.builder.end("aborted", "a new dheader-1.0 came before dseries_end-1.0") \
                if self.builder.open else []
            self.pending_series = header
            if header.get("header_detail", "basic") == "none":
                return events + self._begin({})
            self.expect = "config"
            return events
        if htype == "dimage-1.0":
            self.image = {"dimage": header}
            self.expect = "dimage_d"
            return self._series_of(header)
        if htype == "dimage_d-1.0":
            self.image["dimage_d"] = header
            self.expect = "blob"
            return []
        if htype == "dconfig-1.0":
            self.appendix_ok = True
            return []
        if htype == "dseries_end-1.0":
            return self.builder.end("complete")
        if htype in _BLOB_HEADERS:
            self.expect = _BLOB_HEADERS[htype]
            self.image = {"detail": header}
            return []
        if self.appendix_ok:  # header_appendix / image_appendix: the user's, not ours
            self.appendix_ok = False
            return []
        what = f"unknown htype {htype!r}" if htype else f"a {len(part)}-byte part that is no stream v1 header"
        return self.builder.reject(f"DECTRIS stream v1: {what}")

    def _begin(self, config: dict) -> list[Decoded]:
        header = self.pending_series or {}
        self.pending_series = None
        self.appendix_ok = True
        series = header.get("series")
        images, triggers = config.get("nimages"), config.get("ntrigger", 1)
        announced = images * triggers if isinstance(images, int) and isinstance(triggers, int) else None
        x, y = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
        kept = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or k == "detector_translation"}
        return self.builder.begin(VendorSeries(
            f"dectris-{series}", str(config.get("description", "DECTRIS")), "DECTRIS stream v1",
            frames_announced=announced, pixel_pitch_um=micrometres(config.get("x_pixel_size")),
            bit_depth=config.get("bit_depth_image") if isinstance(config.get("bit_depth_image"), int) else None,
            header={"dheader": header, "config": kept, "series": series}))

    def _series_of(self, dimage: dict) -> list[Decoded]:
        """A dimage with no series open (joined mid-series): open one for it."""
        if self.builder.open:
            return []
        self.pending_series = {"series": dimage.get("series")}
        events = self._begin({})
        self.builder.series.notes.append("no dheader-1.0 seen: the receiver joined mid-series")
        return events

    def _reject_image(self, why: str) -> list[Decoded]:
        frame = self.image.get("dimage", {}).get("frame")
        self.image = {}
        index = frame if isinstance(frame, int) and frame >= 0 else None
        return self.builder.reject(f"DECTRIS stream v1 image {frame}: {why}", index)

    def _frame(self, blob) -> list[Decoded]:
        try:
            pixels = self._decode(blob)
        except (CompressionError, ValueError, KeyError, TypeError) as error:
            return self._reject_image(str(error))
        frame = self.image["dimage"]["frame"]
        self.image = {}
        return self.builder.frame(frame, pixels)

    def _decode(self, blob) -> np.ndarray:
        dimage, info = self.image["dimage"], self.image.get("dimage_d", {})
        if not isinstance(dimage.get("frame"), int) or isinstance(dimage["frame"], bool) or dimage["frame"] < 0:
            raise ValueError(f"frame {dimage.get('frame')!r} is not a frame number")
        dtype = PIXEL_TYPES.get(info.get("type")) if isinstance(info.get("type"), str) else None
        shape = info.get("shape")
        if dtype is None:
            raise ValueError(f"pixel type {info.get('type')!r} is not one of {sorted(PIXEL_TYPES)}")
        if not _is_shape(shape):
            raise ValueError(f"shape {shape!r} is not [x, y]")
        nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
        if nbytes > MAX_FRAME_BYTES:
            raise ValueError(f"a {shape} frame is larger than {MAX_FRAME_BYTES} bytes")
        if isinstance(info.get("size"), int) and info["size"] != len(blob):
            raise ValueError(f"blob of {len(blob)} bytes; dimage_d-1.0 says {info['size']} (truncated?)")
        data = _decompress(blob, info.get("encoding"), np.dtype(dtype).itemsize, nbytes)
        return np.frombuffer(data, dtype).reshape(shape[1], shape[0])

    def _detail_blob(self, blob) -> list[Decoded]:
        """A flatfield, pixel mask or count-rate table after a header with detail "all"."""
        kind, self.expect = self.expect, None
        detail = self.image.pop("detail", {})
        if kind == "pixel_mask":
            shape = detail.get("shape")
            if not _is_shape(shape):
                return self.builder.reject(f"DECTRIS stream v1: pixel mask shape {str(shape)[:80]} is not [x, y]")
            try:
                mask = np.frombuffer(bytes(blob), "<u4").reshape(shape[1], shape[0])
                self.mask = (mask != 0).astype(np.uint8)
            except (ValueError, TypeError, IndexError):
                return self.builder.reject("DECTRIS stream v1: unreadable pixel mask")
            if self.builder.open and not self.builder.series.started:
                self.builder.series.vendor.pixel_mask = self.mask
        return []


def _is_shape(shape) -> bool:
    """[x, y], each an integer 1..65536 (JSON true is no size)."""
    return isinstance(shape, list) and len(shape) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in shape)


def _decompress(blob, encoding, itemsize: int, nbytes: int) -> bytes:
    if encoding in ("bs32-lz4<", "bs16-lz4<", "bs8-lz4<"):
        return decompress_hdf5(blob, "bslz4", itemsize, MAX_FRAME_BYTES, nbytes)
    if encoding == "lz4<":
        return decompress_lz4_block(blob, nbytes)
    if encoding == "<":
        if len(blob) != nbytes:
            raise ValueError(f"raw frame of {len(blob)} bytes; it needs {nbytes}")
        return bytes(blob)
    raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")


def micrometres(metres) -> float | None:
    """A DECTRIS pixel size (m) in µm."""
    return float(metres) * 1e6 if isinstance(metres, (int, float)) and metres > 0 else None
