"""The `simed-stream/1` wire protocol: encoding and validation of ZeroMQ multipart messages.

Part 0 of every message is a UTF-8 JSON header with `htype`, `protocol`, `series_id` and
`msg_seq` (per detector connection, +1 per message, so gaps are detectable). Further parts are
raw little-endian arrays whose dtype and shape the header states. The full specification is
`docs/protocol.md`; this module is its executable form: `encode_*` builds messages, `decode`
checks one against the specification and returns a typed message or raises `ProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL = "simed-stream/1"
DEFAULT_DATA_ENDPOINT = "tcp://127.0.0.1:31001"
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:31002"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_PARTS = 5
MAX_SIDE_PX = 65536  # any image or scan dimension
MAX_FRAMES_PER_MESSAGE = 1_000_000
MAX_FRAME_ID = 2**62

#: Pixel and image types accepted on the wire, always little-endian.
FRAME_DTYPES = {"|u1": np.dtype("|u1"), "<u2": np.dtype("<u2"), "<u4": np.dtype("<u4"), "<f4": np.dtype("<f4")}
SCAN_PATTERNS = ("raster", "serpentine", "list")
END_STATUSES = ("complete", "aborted", "error")


class ProtocolError(ValueError):
    """A message that does not follow simed-stream/1. `frame_ids` names the frames it carried, if known."""

    def __init__(self, reason: str, series_id: str | None = None, frame_ids: np.ndarray | None = None):
        super().__init__(reason)
        self.reason = reason
        self.series_id = series_id
        self.frame_ids = frame_ids


@dataclass
class SeriesStart:
    series_id: str
    msg_seq: int
    header: dict[str, Any]
    pixel_mask: np.ndarray | None = None

    @property
    def sig_shape(self) -> tuple[int, int]:
        return tuple(self.header["detector"]["sig_shape"])

    @property
    def dtype(self) -> np.dtype:
        return FRAME_DTYPES[self.header["detector"]["dtype"]]

    @property
    def nav_shape(self) -> tuple[int, int]:
        return tuple(self.header["scan"]["nav_shape"])

    @property
    def frames_per_position(self) -> int:
        return int(self.header["scan"]["frames_per_position"])

    @property
    def frames_expected(self) -> int:
        return int(self.header["scan"]["frames_expected"])


@dataclass
class Frames:
    series_id: str
    msg_seq: int
    header: dict[str, Any]
    frame_ids: np.ndarray  # (n,) uint64
    scan_yx: np.ndarray  # (n, 2) int32
    timestamps_ns: np.ndarray  # (n,) uint64
    pixels: np.ndarray  # (n, h, w)


@dataclass
class OverviewImage:
    series_id: str
    msg_seq: int
    header: dict[str, Any]
    image: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        """2×3 matrix mapping scan (y, x, 1) to overview pixel (row, column)."""
        return np.asarray(self.header["affine_scan_to_overview"], dtype=np.float64)


@dataclass
class SeriesEnd:
    series_id: str
    msg_seq: int
    header: dict[str, Any]

    @property
    def status(self) -> str:
        return self.header["status"]

    @property
    def frames_sent(self) -> int:
        return int(self.header["frames_sent"])

    @property
    def frames_dropped_at_source(self) -> int:
        return int(self.header["frames_dropped_at_source"])

    @property
    def frames_skipped(self) -> int:
        """Detector frames outside the scan by its geometry (before its start, flyback)."""
        return int(self.header.get("frames_skipped", 0))

    @property
    def frames_beyond_scan(self) -> int:
        """Detector frames after the scan's last one: the series was longer than the scan."""
        return int(self.header.get("frames_beyond_scan", 0))

    @property
    def notes(self) -> list[str]:
        return list(self.header.get("notes", []))


@dataclass
class Heartbeat:
    series_id: str | None
    msg_seq: int
    header: dict[str, Any] = field(default_factory=dict)


Message = SeriesStart | Frames | OverviewImage | SeriesEnd | Heartbeat


# ---------------------------------------------------------------- encoding

def encode_header(header: dict[str, Any]) -> bytes:
    """Compact, key-ordered JSON: the same header always gives the same bytes."""
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def _base(htype: str, series_id: str | None, msg_seq: int) -> dict[str, Any]:
    return {"htype": htype, "protocol": PROTOCOL, "series_id": series_id, "msg_seq": int(msg_seq)}


def _le(array: np.ndarray, dtype: str) -> memoryview:
    return memoryview(np.ascontiguousarray(array, dtype=np.dtype(dtype))).cast("B")


def encode_series_start(series_id: str, msg_seq: int, fields: dict[str, Any],
                        pixel_mask: np.ndarray | None = None) -> list:
    header = _base("series_start", series_id, msg_seq) | fields | {"pixel_mask": pixel_mask is not None}
    parts: list = [encode_header(header)]
    if pixel_mask is not None:
        parts.append(_le(pixel_mask, "|u1"))
    return parts


def encode_frames(series_id: str, msg_seq: int, frame_ids: np.ndarray, scan_yx: np.ndarray,
                  timestamps_ns: np.ndarray, pixels: np.ndarray) -> list:
    dtype = pixels.dtype.newbyteorder("<") if pixels.dtype.byteorder == ">" else pixels.dtype
    header = _base("frames", series_id, msg_seq) | {
        "first_frame_id": int(frame_ids[0]) if len(frame_ids) else 0,
        "count": int(len(frame_ids)),
        "shape": [int(s) for s in pixels.shape[1:]],
        "dtype": dtype.str,
    }
    return [encode_header(header), _le(frame_ids, "<u8"), _le(scan_yx, "<i4"), _le(timestamps_ns, "<u8"),
            _le(pixels, dtype.str)]


def encode_overview(series_id: str, msg_seq: int, overview_id: int, image: np.ndarray, pixel_size_A: float,
                    affine_scan_to_overview: np.ndarray, acquired: str) -> list:
    header = _base("overview_image", series_id, msg_seq) | {
        "overview_id": int(overview_id),
        "shape": [int(s) for s in image.shape],
        "dtype": "<f4",
        "pixel_size_A": float(pixel_size_A),
        "affine_scan_to_overview": np.asarray(affine_scan_to_overview, dtype=float).tolist(),
        "acquired": acquired,
    }
    return [encode_header(header), _le(image, "<f4")]


def encode_series_end(series_id: str, msg_seq: int, status: str, frames_sent: int,
                      frames_dropped_at_source: int, **outside_scan) -> list:
    """`outside_scan`: the optional `frames_skipped`, `frames_beyond_scan` and `notes` of a
    detector whose frames an adapter placed on the scan."""
    header = _base("series_end", series_id, msg_seq) | {
        "status": status, "frames_sent": int(frames_sent), "frames_dropped_at_source": int(frames_dropped_at_source),
    } | outside_scan
    return [encode_header(header)]


def encode_heartbeat(series_id: str | None, msg_seq: int, time_ns: int, state: str) -> list:
    return [encode_header(_base("heartbeat", series_id, msg_seq) | {"time_ns": int(time_ns), "state": state})]


# ---------------------------------------------------------------- decoding

def decode_header(part: bytes | memoryview) -> dict[str, Any]:
    if len(part) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(part)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(part).decode("utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, 4300-digit ints, deep nesting
        raise ProtocolError(f"part 0 is not a usable JSON header ({error.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(f"protocol {header.get('protocol')!r} is not {PROTOCOL!r}")
    if not isinstance(header.get("htype"), str) or header["htype"] not in _DECODERS:
        raise ProtocolError(f"unknown htype {header.get('htype')!r}")
    if not isinstance(header.get("msg_seq"), int) or header["msg_seq"] < 0:
        raise ProtocolError("msg_seq must be a non-negative integer")
    series_id = header.get("series_id")
    if header["htype"] != "heartbeat" and (not isinstance(series_id, str) or not series_id):
        raise ProtocolError("series_id must be a non-empty string")
    return header


def decode(parts: list, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Validate one multipart message against the specification and return it typed.

    Series-level checks (frame shape against `series_start`, ids in range) are the receiver's,
    which knows the series.
    """
    if not parts:
        raise ProtocolError("empty message")
    header = decode_header(parts[0])
    if len(parts) > MAX_PARTS:
        raise ProtocolError(f"message has {len(parts)} parts; no simed-stream/1 message has more than {MAX_PARTS}",
                            header.get("series_id"), _declared_ids(header, parts))
    size = sum(len(part) for part in parts)
    if size > max_message_bytes:
        ids = _declared_ids(header, parts)
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_message_bytes}",
                            header.get("series_id"), ids)
    return _DECODERS[header["htype"]](header, parts)


def _declared_ids(header: dict[str, Any], parts: list | None = None) -> np.ndarray | None:
    """The frame ids a rejected frames message carried, for accounting: the ids part when it
    is intact, else first_frame_id .. + count when those are plausible, else None."""
    if header.get("htype") != "frames":
        return None
    first, count = header.get("first_frame_id"), header.get("count")
    if not (_is_int(first) and _is_int(count) and 0 <= first < MAX_FRAME_ID and 0 < count <= MAX_FRAMES_PER_MESSAGE):
        return None
    if parts is not None and len(parts) > 1 and len(parts[1]) == 8 * count:
        ids = np.frombuffer(parts[1], dtype="<u8")
        return ids if int(ids.max()) < MAX_FRAME_ID else None
    return np.arange(first, first + count, dtype=np.uint64)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(header: dict[str, Any], key: str, kind, where: str = "") -> Any:
    value = header.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ProtocolError(f"{where}{key} must be {names}, got {value!r}", header.get("series_id"))
    return value


def _shape(value: Any, ndim: int, what: str, series_id: str | None) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) != ndim
            or not all(_is_int(v) and 0 < v <= MAX_SIDE_PX for v in value)):
        raise ProtocolError(f"{what} must be a list of {ndim} integers in 1..{MAX_SIDE_PX}, got {value!r}"[:300],
                            series_id)
    return tuple(value)


def _array(part, dtype: np.dtype, shape: tuple[int, ...], what: str, header, ids=None) -> np.ndarray:
    expected = dtype.itemsize
    for side in shape:  # Python ints: np.prod would wrap around for absurd shapes
        expected *= side
    if len(part) != expected:
        raise ProtocolError(f"{what} part has {len(part)} bytes, expected {expected} for shape {list(shape)} {dtype.str}",
                            header.get("series_id"), ids)
    return np.frombuffer(part, dtype=dtype).reshape(shape)


def _decode_series_start(header, parts) -> SeriesStart:
    sid = header["series_id"]
    for key in ("unique_id", "trigger_mode", "encoding"):
        _require(header, key, str)
    detector = _require(header, "detector", dict)
    scan = _require(header, "scan", dict)
    for section in ("optics", "microscope", "user_data"):
        _require(header, section, dict)
    sig_shape = _shape(detector.get("sig_shape"), 2, "detector.sig_shape", sid)
    if not isinstance(detector.get("dtype"), str) or detector["dtype"] not in FRAME_DTYPES:
        raise ProtocolError(f"detector.dtype {detector.get('dtype')!r} is not one of {sorted(FRAME_DTYPES)}", sid)
    _require(detector, "model", str, "detector.")
    nav_shape = _shape(scan.get("nav_shape"), 2, "scan.nav_shape", sid)
    if scan.get("pattern") not in SCAN_PATTERNS:
        raise ProtocolError(f"scan.pattern {scan.get('pattern')!r} is not one of {SCAN_PATTERNS}", sid)
    per_position = _require(scan, "frames_per_position", int, "scan.")
    expected = _require(scan, "frames_expected", int, "scan.")
    if not 1 <= expected <= 50_000_000:
        raise ProtocolError(f"scan.frames_expected={expected} must be between 1 and 50 000 000", sid)
    if sig_shape[0] * sig_shape[1] * FRAME_DTYPES[detector["dtype"]].itemsize > 256 * 1024 * 1024:
        raise ProtocolError(f"detector.sig_shape {list(sig_shape)} is larger than 256 MiB a frame", sid)
    if nav_shape[0] * nav_shape[1] > 10_000_000:
        raise ProtocolError(f"scan.nav_shape {list(nav_shape)} has more than 10 000 000 positions", sid)
    if per_position < 1 or expected != per_position * nav_shape[0] * nav_shape[1] and scan["pattern"] != "list":
        raise ProtocolError(
            f"scan.frames_expected={expected} does not equal frames_per_position × positions "
            f"({per_position} × {nav_shape[0]}×{nav_shape[1]})", sid)
    if header.get("encoding") != "raw":
        raise ProtocolError(f"encoding {header.get('encoding')!r} is not supported (only 'raw')", sid)
    mask = None
    if _require(header, "pixel_mask", bool):
        if len(parts) != 2:
            raise ProtocolError("pixel_mask is true but there is no mask part", sid)
        mask = _array(parts[1], np.dtype("|u1"), sig_shape, "pixel_mask", header)
    elif len(parts) != 1:
        raise ProtocolError(f"series_start has {len(parts)} parts, expected 1", sid)
    return SeriesStart(sid, header["msg_seq"], header, mask)


def _decode_frames(header, parts) -> Frames:
    sid = header["series_id"]
    ids = _declared_ids(header, parts)
    count = _require(header, "count", int)
    first = _require(header, "first_frame_id", int)
    if not 1 <= count <= MAX_FRAMES_PER_MESSAGE:
        raise ProtocolError(f"count must be 1..{MAX_FRAMES_PER_MESSAGE}, got {count}", sid)
    if not 0 <= first < MAX_FRAME_ID:
        raise ProtocolError(f"first_frame_id out of range: {first}", sid)
    shape = _shape(header.get("shape"), 2, "shape", sid)
    dtype = FRAME_DTYPES.get(header["dtype"]) if isinstance(header.get("dtype"), str) else None
    if dtype is None:
        raise ProtocolError(f"dtype {header.get('dtype')!r} is not one of {sorted(FRAME_DTYPES)}", sid, ids)
    if len(parts) != 5:
        raise ProtocolError(f"frames message has {len(parts)} parts, expected 5", sid, ids)
    frame_ids = _array(parts[1], np.dtype("<u8"), (count,), "frame_ids", header, ids)
    if int(frame_ids.max()) >= MAX_FRAME_ID:  # no series has such a frame: blame the header's range instead
        raise ProtocolError(f"frame id {int(frame_ids.max())} out of range (below {MAX_FRAME_ID})", sid,
                            _declared_ids(header))
    scan_yx = _array(parts[2], np.dtype("<i4"), (count, 2), "scan_yx", header, frame_ids)
    timestamps = _array(parts[3], np.dtype("<u8"), (count,), "timestamps", header, frame_ids)
    if int(frame_ids[0]) != header["first_frame_id"]:
        raise ProtocolError("first_frame_id does not match the first frame id", sid, frame_ids)
    pixels = _array(parts[4], dtype, (count, *shape), "pixels", header, frame_ids)
    return Frames(sid, header["msg_seq"], header, frame_ids, scan_yx, timestamps, pixels)


def _decode_overview(header, parts) -> OverviewImage:
    sid = header["series_id"]
    _require(header, "overview_id", int)
    shape = _shape(header.get("shape"), 2, "shape", sid)
    if header.get("dtype") != "<f4":
        raise ProtocolError(f"overview dtype must be '<f4', got {header.get('dtype')!r}", sid)
    pixel = _require(header, "pixel_size_A", (float, int))
    if not pixel > 0:
        raise ProtocolError("pixel_size_A must be positive", sid)
    affine = header.get("affine_scan_to_overview")
    try:
        matrix = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = np.zeros(0)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ProtocolError(f"affine_scan_to_overview must be a finite 2×3 matrix, got {affine!r}", sid)
    if header.get("acquired") not in ("before", "after"):
        raise ProtocolError(f"acquired must be 'before' or 'after', got {header.get('acquired')!r}", sid)
    if len(parts) != 2:
        raise ProtocolError(f"overview_image has {len(parts)} parts, expected 2", sid)
    return OverviewImage(sid, header["msg_seq"], header, _array(parts[1], np.dtype("<f4"), shape, "image", header))


def _decode_series_end(header, parts) -> SeriesEnd:
    sid = header["series_id"]
    if header.get("status") not in END_STATUSES:
        raise ProtocolError(f"status {header.get('status')!r} is not one of {END_STATUSES}", sid)
    for key in ("frames_sent", "frames_dropped_at_source"):
        if _require(header, key, int) < 0:
            raise ProtocolError(f"{key} must be >= 0", sid)
    for key in ("frames_skipped", "frames_beyond_scan"):
        if key in header and _require(header, key, int) < 0:
            raise ProtocolError(f"{key} must be >= 0", sid)
    notes = header.get("notes", [])
    if not isinstance(notes, list) or len(notes) > 100 or not all(isinstance(n, str) and len(n) <= 1000 for n in notes):
        raise ProtocolError("notes must be a list of at most 100 strings of at most 1000 characters", sid)
    if len(parts) != 1:
        raise ProtocolError(f"series_end has {len(parts)} parts, expected 1", sid)
    return SeriesEnd(sid, header["msg_seq"], header)


def _decode_heartbeat(header, parts) -> Heartbeat:
    if len(parts) != 1:
        raise ProtocolError(f"heartbeat has {len(parts)} parts, expected 1")
    return Heartbeat(header.get("series_id"), header["msg_seq"], header)


_DECODERS = {
    "series_start": _decode_series_start,
    "frames": _decode_frames,
    "overview_image": _decode_overview,
    "series_end": _decode_series_end,
    "heartbeat": _decode_heartbeat,
}


def scan_order(nav_shape: tuple[int, int], pattern: str) -> np.ndarray:
    """(positions, 2) scan (y, x) in acquisition order for raster or serpentine scans."""
    ny, nx = nav_shape
    y, x = np.divmod(np.arange(ny * nx), nx)
    if pattern == "serpentine":
        x = np.where(y % 2 == 1, nx - 1 - x, x)
    elif pattern != "raster":
        raise ValueError(f"no implicit order for pattern {pattern!r}")
    return np.stack([y, x], axis=1).astype(np.int32)
