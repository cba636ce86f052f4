"""Lossless HDF5 captures of a simed-stream series (`docs/capture.md`).

One file per series. Frames are stored one per chunk with the bitshuffle/LZ4 filter that
detector vendors use, compressed by the caller (off the writer's lock) and written with direct
chunk writes. Every accepted message header is kept verbatim with its arrival time, so
`simed detector --capture` replays the same stream bit for bit. The writer flushes about once a
second; a receiver killed between flushes leaves a file readable up to the last flush, because
`frame_status` (what counts) is only written with a flush.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from simed_stream.protocol import FRAME_DTYPES, OverviewImage, SeriesStart

FORMAT = "simed-capture/1"
MISSING, RECEIVED, REJECTED = 0, 1, 2
_BITSHUFFLE_BLOCK_BYTES = 8192  # bitshuffle's default block: 8 KiB of elements


def compress_frame(frame: np.ndarray) -> bytes:
    """One frame as a bitshuffle/LZ4 HDF5 chunk (12-byte header: size, block size; big-endian)."""
    import bitshuffle

    frame = np.ascontiguousarray(frame)
    block_elements = max(128, (_BITSHUFFLE_BLOCK_BYTES // frame.itemsize) // 8 * 8)
    body = bitshuffle.compress_lz4(frame.reshape(-1), block_elements)
    return struct.pack(">QI", frame.nbytes, block_elements * frame.itemsize) + body.tobytes()


def position_sum_dtype(frame_dtype: np.dtype) -> np.dtype:
    """Sums of integer frames are uint32 (no overflow for thousands of 16-bit frames); floats stay float32."""
    return np.dtype("<f4") if frame_dtype.kind == "f" else np.dtype("<u4")


@dataclass
class Accounting:
    """Every expected frame is exactly one of received, rejected, dropped at source or missing."""

    frames_expected: int
    received: int = 0
    rejected: int = 0
    dropped_at_source: int = 0
    duplicates: int = 0
    rejected_messages: int = 0
    positions_valid: int = 0
    positions_total: int = 0

    @property
    def missing(self) -> int:
        return self.frames_expected - self.received - self.rejected - self.dropped_at_source

    @property
    def coverage(self) -> float:
        return self.positions_valid / self.positions_total if self.positions_total else 0.0

    def as_dict(self) -> dict:
        return {
            "frames_expected": self.frames_expected, "received": self.received, "rejected": self.rejected,
            "dropped_at_source": self.dropped_at_source, "missing": self.missing, "duplicates": self.duplicates,
            "rejected_messages": self.rejected_messages, "positions_valid": self.positions_valid,
            "positions_total": self.positions_total, "coverage": round(self.coverage, 6),
        }


class CaptureWriter:
    """Owns one capture file; all methods must be called from one thread."""

    def __init__(self, path: str | Path, start: SeriesStart, start_header_bytes: bytes, receive_time_ns: int):
        self.path = Path(path)
        self.start = start
        n = start.frames_expected
        h, w = start.sig_shape
        ny, nx = start.nav_shape
        self.file = h5py.File(self.path, "w")
        f = self.file
        f.attrs.update(format=FORMAT, series_id=start.series_id, unique_id=start.header["unique_id"],
                       protocol=start.header["protocol"], series_start=start_header_bytes.decode(),
                       state="open", created_unix_s=time.time())
        filters = hdf5plugin.Bitshuffle(cname="lz4")
        self.frames = f.create_dataset("frames", (n, h, w), start.dtype, chunks=(1, h, w), **filters)
        self.frame_status = f.create_dataset("frame_status", (n,), np.uint8, fillvalue=MISSING)
        self.scan_yx = f.create_dataset("scan_yx", (n, 2), np.int32, fillvalue=-1)
        self.timestamp_ns = f.create_dataset("timestamp_ns", (n,), np.uint64)
        self.frame_message = f.create_dataset("frame_message", (n,), np.int32, fillvalue=-1)
        self.frame_slot = f.create_dataset("frame_slot", (n,), np.int32, fillvalue=-1)
        strings = h5py.string_dtype()
        self.message_header = f.create_dataset("messages/header", (0,), strings, maxshape=(None,), chunks=(256,))
        self.message_time = f.create_dataset("messages/receive_time_ns", (0,), np.uint64, maxshape=(None,), chunks=(256,))
        self.rejected_reason = f.create_dataset("rejections/reason", (0,), strings, maxshape=(None,), chunks=(64,))
        if start.pixel_mask is not None:
            f.create_dataset("pixel_mask", data=start.pixel_mask)
        positions = ny * nx
        sum_dtype = position_sum_dtype(start.dtype)
        self.position_sum = f.create_dataset("positions/sum", (positions, h, w), sum_dtype, chunks=(1, h, w), **filters)
        self.position_count = f.create_dataset("positions/frame_count", (positions,), np.int32)
        self.beam_centre = f.create_dataset("positions/beam_centre_yx", (positions, 2), np.float64, fillvalue=np.nan)
        self.position_valid = f.create_dataset("positions/valid", (positions,), bool)
        self._headers: list[str] = []
        self._times: list[int] = []
        self._rejections: list[str] = []
        self.add_message(start_header_bytes, receive_time_ns)
        self.flush()

    # -- frames and messages
    def add_message(self, header_bytes: bytes, receive_time_ns: int) -> int:
        """Record an accepted message header verbatim; returns its index."""
        self._headers.append(header_bytes.decode())
        self._times.append(receive_time_ns)
        return self.message_header.shape[0] + len(self._headers) - 1

    def write_frames(self, message_index: int, frame_ids: np.ndarray, chunks: list[bytes], scan_yx: np.ndarray,
                     timestamps_ns: np.ndarray) -> None:
        ids = frame_ids.astype(np.int64)
        for frame_id, chunk in zip(ids, chunks):
            self.frames.id.write_direct_chunk((int(frame_id), 0, 0), chunk)
        order = np.argsort(ids)  # h5py fancy indexing wants increasing indices
        sorted_ids = ids[order]
        self.scan_yx[sorted_ids] = scan_yx[order]
        self.timestamp_ns[sorted_ids] = timestamps_ns[order]
        self.frame_message[sorted_ids] = message_index
        self.frame_slot[sorted_ids] = np.arange(len(ids), dtype=np.int32)[order]

    def add_rejection(self, reason: str) -> None:
        self._rejections.append(reason)

    def write_position(self, position: int, frame_sum: np.ndarray, frame_count: int, centre_yx, valid: bool) -> None:
        self.position_sum.id.write_direct_chunk((position, 0, 0), compress_frame(frame_sum))
        self.position_count[position] = frame_count
        self.beam_centre[position] = centre_yx
        self.position_valid[position] = valid

    def write_overview(self, overview: OverviewImage, header_bytes: bytes) -> None:
        name = f"overviews/{overview.header['overview_id']}"
        if name in self.file:
            del self.file[name]
        dataset = self.file.create_dataset(name, data=overview.image, compression="gzip", compression_opts=1)
        dataset.attrs.update(header=header_bytes.decode(), pixel_size_A=float(overview.header["pixel_size_A"]),
                             affine_scan_to_overview=overview.affine, acquired=overview.header["acquired"])

    # -- bookkeeping
    def flush(self, accounting: Accounting | None = None, frame_status: np.ndarray | None = None) -> None:
        """Write buffered tables, then the frame status: on disk it never runs ahead of the frames."""
        for dataset, items in ((self.message_header, self._headers), (self.message_time, self._times),
                               (self.rejected_reason, self._rejections)):
            if items:
                start = dataset.shape[0]
                dataset.resize((start + len(items),))
                dataset[start:] = items
                items.clear()
        if frame_status is not None:
            self.file.flush()  # frames before the status that declares them
            self.frame_status[:] = frame_status
        if accounting is not None:
            self.file.attrs["accounting"] = json.dumps(accounting.as_dict())
        self.file.flush()

    def close(self, accounting: Accounting, frame_status: np.ndarray, end_status: str, notes: list[str],
              descan_plane: np.ndarray | None) -> None:
        if descan_plane is not None:
            self.file.create_dataset("positions/descan_plane_yx", data=descan_plane)
        self.file.attrs.update(end_status=end_status, notes=json.dumps(notes), closed_unix_s=time.time())
        self.flush(accounting, frame_status)
        self.file.attrs["state"] = "closed"
        self.file.close()


class CaptureReader:
    """Read access to a capture, also one cut short; import hdf5plugin so the frames decode."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} is not a readable HDF5 capture: {error}") from None
        if self.file.attrs.get("format") != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not a {FORMAT} capture (format={self.file.attrs.get('format')!r})")
        self.series_start = json.loads(self.file.attrs["series_start"])

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    @property
    def accounting(self) -> dict:
        return json.loads(self.file.attrs.get("accounting", "{}"))

    @property
    def frame_status(self) -> np.ndarray:
        return self.file["frame_status"][:]

    @property
    def dtype(self) -> np.dtype:
        return FRAME_DTYPES[self.series_start["detector"]["dtype"]]

    def frames(self, ids) -> np.ndarray:
        return self.file["frames"][np.asarray(ids)]

    def message_headers(self) -> list[bytes]:
        return [h.encode() if isinstance(h, str) else bytes(h) for h in self.file["messages/header"][:]]

    def message_times_ns(self) -> np.ndarray:
        return self.file["messages/receive_time_ns"][:]
