"""DECTRIS stream v2: one CBOR map per message (`type`: start, image, end), decoded with cbor2.

Arrays are RFC 8746 typed arrays (tags 64–87) inside multi-dimensional arrays (tag 40, row
major; 1040, column major); any byte string may be DECTRIS-compressed (tag 56500:
["bslz4" | "lz4", element size, data], HDF5 framing). Images carry one array per channel
(threshold); the one taken is `dectris.channel`, by default the first of the start message's
`channels`. Every declared size is bounded before it is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.dectris.compression import CompressionError, decompress_hdf5
from simed_stream.detectors.dectris.stream_v1 import micrometres
from simed_stream.detectors.series_builder import SeriesBuilder, VendorSeries

MAX_ARRAY_BYTES = 256 << 20
#: RFC 8746 typed-array tags → numpy dtypes (bit 2 of the tag: little-endian)
TYPED_ARRAYS = {64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
                72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
                80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8"}
FRAME_DTYPES = {"u1": "|u1", "u2": "<u2", "u4": "<u4", "f4": "<f4"}  # simed's, by kind and size
_START_KEYS = ("arm_date", "beam_center_x", "beam_center_y", "channels", "count_time", "detector_description",
               "detector_serial_number", "frame_time", "image_size_x", "image_size_y", "incident_energy",
               "number_of_images", "pixel_size_x", "pixel_size_y", "saturation_value", "sensor_material",
               "sensor_thickness", "series_id", "series_unique_id", "threshold_energy")


class V2Error(ValueError):
    pass


class Broken:
    """Data that did not decompress, kept in place of its array so the image's id still counts it."""

    def __init__(self, reason: str):
        self.reason = reason


def _tag_hook(tag, immutable):
    """cbor2 (≥ 6) calls this for every tag, innermost first."""
    import cbor2

    value = tag.value
    if tag.tag == 55799:  # "self-described CBOR": the item itself
        return value
    if tag.tag == 56500:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[2], bytes)):
            raise V2Error("tag 56500 is not [algorithm, element size, bytes]")
        algorithm, elem_size, data = value
        try:
            return decompress_hdf5(data, algorithm, int(elem_size or 1), MAX_ARRAY_BYTES)
        except (CompressionError, TypeError) as error:
            return Broken(str(error))
    if isinstance(value, Broken) or isinstance(value, (list, tuple)) and len(value) == 2 \
            and isinstance(value[1], Broken):
        return value if isinstance(value, Broken) else value[1]
    if tag.tag in TYPED_ARRAYS:
        if not isinstance(value, bytes) or len(value) % np.dtype(TYPED_ARRAYS[tag.tag]).itemsize:
            raise V2Error(f"typed array tag {tag.tag} does not hold whole elements")
        return np.frombuffer(value, TYPED_ARRAYS[tag.tag])
    if tag.tag in (40, 1040):
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], np.ndarray)):
            raise V2Error(f"tag {tag.tag} is not [dimensions, typed array]")
        dims, array = value
        if not (isinstance(dims, (list, tuple)) and all(isinstance(d, int) and d >= 0 for d in dims)):
            # numpy would read -1 as "the rest" and accept what the sender never meant
            raise V2Error(f"dimensions {str(dims)[:80]} are not non-negative integers")
        try:
            return array.reshape([int(d) for d in dims], order="C" if tag.tag == 40 else "F")
        except (ValueError, TypeError):
            raise V2Error(f"dimensions {dims!r} do not fit {array.size} elements") from None
    return cbor2.CBORTag(tag.tag, value)


def decode_message(data) -> dict:
    """One stream v2 message as a dict (arrays decoded and decompressed), or V2Error."""
    import cbor2

    try:
        message = cbor2.loads(bytes(data), tag_hook=_tag_hook)
    except V2Error:
        raise
    except Exception as error:  # cbor2's CBORDecodeError and what a hostile map makes it raise
        cause = error.__cause__ if isinstance(error.__cause__, V2Error) else None
        raise V2Error(str(cause) if cause else f"not a CBOR message ({error.__class__.__name__})") from None
    if not isinstance(message, Mapping) or message.get("type") not in ("start", "image", "end"):
        raise V2Error("not a stream v2 message (a CBOR map whose type is start, image or end)")
    return message


class StreamV2:
    def __init__(self, builder: SeriesBuilder, channel: str | None):
        self.builder, self.channel_setting = builder, channel
        self.channel: str | None = channel

    def message(self, data) -> list[Decoded]:
        try:
            message = decode_message(data)
        except V2Error as error:
            return self.builder.reject(f"DECTRIS stream v2: {error}")
        kind = message["type"]
        if kind == "start":
            return self._start(message)
        if kind == "end":
            return self.builder.end("complete") if self.builder.open else []
        return self._image(message)

    def _start(self, start: dict) -> list[Decoded]:
        # channel names are strings; anything else (a list is no dict key) is no channel
        channels = [c for c in start.get("channels") if isinstance(c, str)] \
            if isinstance(start.get("channels"), (list, tuple)) else []
        self.channel = self.channel_setting or (channels[0] if channels else None)
        mask = start["pixel_mask"].get(self.channel) if isinstance(start.get("pixel_mask"), Mapping) else None
        vendor = VendorSeries(
            f"dectris-{start.get('series_id')}", str(start.get("detector_description", "DECTRIS")),
            "DECTRIS stream v2", unique_id=_text(start.get("series_unique_id")),
            frames_announced=start.get("number_of_images") if isinstance(start.get("number_of_images"), int) else None,
            pixel_pitch_um=micrometres(start.get("pixel_size_x")),
            pixel_mask=(mask != 0).astype(np.uint8) if isinstance(mask, np.ndarray) and mask.ndim == 2 else None,
            header={k: _plain(start[k]) for k in _START_KEYS if k in start} | {"channel": self.channel})
        events = self.builder.begin(vendor)
        if self.channel_setting and channels and self.channel_setting not in channels:
            self.builder.series.notes.append(f"channel {self.channel_setting!r} is not among {channels}")
        return events

    def _image(self, image: dict) -> list[Decoded]:
        index = image.get("image_id")
        index = index if isinstance(index, int) and index >= 0 else None
        if not self.builder.open:
            self._start({"series_id": image.get("series_id"), "series_unique_id": image.get("series_unique_id"),
                         "channels": sorted(k for k in image["data"] if isinstance(k, str))
                         if isinstance(image.get("data"), Mapping) else []})
            self.builder.series.notes.append("no start message seen: the receiver joined mid-series")
        data = image.get("data") if isinstance(image.get("data"), Mapping) else {}
        array = data.get(self.channel) if self.channel is not None else next(iter(data.values()), None)
        if isinstance(array, Broken):
            return self.builder.reject(f"DECTRIS stream v2 image {image.get('image_id')!r}: {array.reason}", index)
        if index is None or not isinstance(array, np.ndarray) or array.ndim != 2:
            return self.builder.reject(f"DECTRIS stream v2 image {image.get('image_id')!r}: no 2-D array in "
                                       f"channel {self.channel!r}", index)
        dtype = FRAME_DTYPES.get(f"{array.dtype.kind}{array.dtype.itemsize}")
        if dtype is None:
            return self.builder.reject(f"DECTRIS stream v2 image {index}: pixel type {array.dtype} is not "
                                       "unsigned 8/16/32-bit or float32", index)
        return self.builder.frame(index, array.astype(dtype, copy=False), _stamp_ns(image))


def _stamp_ns(image: dict) -> int | None:
    start, date = image.get("start_time"), image.get("series_date")
    if not (isinstance(start, (list, tuple)) and len(start) == 2 and isinstance(date, datetime)
            and isinstance(start[0], int) and isinstance(start[1], int) and start[0] >= 0 and start[1] > 0):
        return None  # start_time is [ticks, ticks per second]
    try:
        stamp_ns = int(date.timestamp() * 1e9) + start[0] * 1_000_000_000 // start[1]
    except (OverflowError, ValueError, OSError):  # a date outside what the platform's clock can say
        return None
    return stamp_ns if 0 < stamp_ns < 2**63 else None


def _plain(value):
    """JSON-able: arrays and tags are summarised, dates written out."""
    if isinstance(value, np.ndarray):
        return f"array {list(value.shape)} {value.dtype}"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)[:200]


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None
