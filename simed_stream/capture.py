"""Lossless HDF5 captures of a simed-stream series (`docs/capture.md`).

One file per series. Frames are stored one per chunk, bitshuffled and LZ4-compressed as
detector vendors store them (through Blosc, hdf5plugin's filter 32001), compressed in threads
and written with direct chunk writes. Every accepted message header is kept verbatim with its arrival time, so
`simed detector --capture` replays the same stream bit for bit. The writer flushes about once a
second; a receiver killed between flushes leaves a file readable up to the last flush, because
`frame_status` (what counts) is only written with a flush.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from simed_stream.protocol import FRAME_DTYPES, OverviewImage, SeriesStart

FORMAT = "simed-capture/1"
MISSING, RECEIVED, REJECTED = 0, 1, 2


def _codec():
    from numcodecs import Blosc, blosc

    blosc.use_threads = False  # our threads call it; Blosc must not start its own
    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)


_CODEC = None


def compress_frame(frame: np.ndarray) -> bytes:
    """One frame as a Blosc (bitshuffle + LZ4) HDF5 chunk, for a direct chunk write.

    Blosc's bitshuffle/LZ4 rather than the bitshuffle filter's own: the same transform and
    codec, but numcodecs' Blosc releases the GIL, so frames compress in parallel threads
    (bitshuffle's Python binding holds it)."""
    global _CODEC
    if _CODEC is None:
        _CODEC = _codec()
    return bytes(_CODEC.encode(np.ascontiguousarray(frame)))


def compress_frames(frames: np.ndarray, pool=None) -> list[bytes]:
    """`compress_frame` over a batch: the first half in `pool` (when given), the rest here."""
    if pool is None or len(frames) < 4:
        return [compress_frame(frame) for frame in frames]
    middle = len(frames) // 2
    first = pool.submit(lambda: [compress_frame(frame) for frame in frames[:middle]])
    second = [compress_frame(frame) for frame in frames[middle:]]
    return first.result() + second


#: HDF5 filter matching `compress_frame`, for h5py to read the chunks (with hdf5plugin imported).
def frame_filter():
    return hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)


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
        self.file = h5py.File(self.path, "x")  # never overwrite a capture
        f = self.file
        f.attrs.update(format=FORMAT, series_id=start.series_id, unique_id=start.header["unique_id"],
                       protocol=start.header["protocol"], series_start=start_header_bytes.decode(),
                       state="open", created_unix_s=time.time())
        filters = frame_filter()
        self.frames = f.create_dataset("frames", (n, h, w), start.dtype, chunks=(1, h, w), **filters)
        self.frame_status = f.create_dataset("frame_status", (n,), np.uint8, fillvalue=MISSING)
        self.scan_yx = f.create_dataset("scan_yx", (n, 2), np.int32, fillvalue=-1)
        self.timestamp_ns = f.create_dataset("timestamp_ns", (n,), np.uint64)
        self.frame_message = f.create_dataset("frame_message", (n,), np.int32, fillvalue=-1)
        self.frame_slot = f.create_dataset("frame_slot", (n,), np.int32, fillvalue=-1)
        strings = h5py.string_dtype()
        self.message_header = f.create_dataset("messages/header", (0,), strings, maxshape=(None,), chunks=(256,))
        self.message_time = f.create_dataset("messages/receive_time_ns", (0,), np.uint64, maxshape=(None,), chunks=(256,))
        self.message_frame_ids = f.create_dataset("messages/frame_ids", (0,), h5py.vlen_dtype(np.uint64),
                                                  maxshape=(None,), chunks=(256,))
        self.rejected_reason = f.create_dataset("rejections/reason", (0,), strings, maxshape=(None,), chunks=(64,))
        if start.pixel_mask is not None:
            f.create_dataset("pixel_mask", data=start.pixel_mask)
        positions = ny * nx
        sum_dtype = position_sum_dtype(start.dtype)
        self.position_sum = f.create_dataset("positions/sum", (positions, h, w), sum_dtype, chunks=(1, h, w), **filters)
        self.position_count = f.create_dataset("positions/frame_count", (positions,), np.int32)
        self.beam_centre = f.create_dataset("positions/beam_centre_yx", (positions, 2), np.float64, fillvalue=np.nan)
        self.position_valid = f.create_dataset("positions/valid", (positions,), bool)
        # per-frame tables live in memory (24 bytes a frame) and go to disk whole at each flush:
        # h5py's point selections would cost milliseconds per message
        self._scan_yx = np.full((n, 2), -1, np.int32)
        self._timestamp_ns = np.zeros(n, np.uint64)
        self._frame_message = np.full(n, -1, np.int32)
        self._frame_slot = np.full(n, -1, np.int32)
        self._position_count = np.zeros(positions, np.int32)
        self._beam_centre = np.full((positions, 2), np.nan)
        self._position_valid = np.zeros(positions, bool)
        self._tables_dirty = False
        self._headers: list[str] = []
        self._times: list[int] = []
        self._message_ids: list[np.ndarray] = []
        self._rejections: list[str] = []
        self.add_message(start_header_bytes, receive_time_ns)
        self.flush()

    # -- frames and messages
    def add_message(self, header_bytes: bytes, receive_time_ns: int, frame_ids: np.ndarray | None = None) -> int:
        """Record an accepted message header verbatim, with the frame ids it carried (all of
        them, duplicates of earlier frames included, so a replay can rebuild it); returns its index."""
        self._headers.append(header_bytes.decode())
        self._times.append(receive_time_ns)
        self._message_ids.append(np.zeros(0, np.uint64) if frame_ids is None else np.asarray(frame_ids, np.uint64))
        return self.message_header.shape[0] + len(self._headers) - 1

    def write_frames(self, message_index: int, frame_ids: np.ndarray, chunks: list[bytes], scan_yx: np.ndarray,
                     timestamps_ns: np.ndarray, slots_in_message: np.ndarray) -> None:
        """Write pre-compressed frames now; their per-frame tables are kept and written at flush."""
        ids = frame_ids.astype(np.int64)
        write_chunk = self.frames.id.write_direct_chunk
        for frame_id, chunk in zip(ids.tolist(), chunks):
            write_chunk((frame_id, 0, 0), chunk)
        self._scan_yx[ids] = scan_yx
        self._timestamp_ns[ids] = timestamps_ns
        self._frame_message[ids] = message_index
        self._frame_slot[ids] = slots_in_message
        self._tables_dirty = True

    def add_rejection(self, reason: str) -> None:
        self._rejections.append(reason)

    def write_position(self, position: int, chunk: bytes, frame_count: int, centre_yx, valid: bool) -> None:
        """A position's summed frame, compressed by `compress_frame`, and its table entries."""
        self.position_sum.id.write_direct_chunk((position, 0, 0), chunk)
        self._position_count[position] = frame_count
        self._beam_centre[position] = centre_yx
        self._position_valid[position] = valid
        self._tables_dirty = True

    def write_overview(self, overview: OverviewImage, header_bytes: bytes) -> None:
        name = f"overviews/{overview.header['overview_id']}"
        if name in self.file:  # a second image under the same id: keep both
            name = f"{name}-{overview.msg_seq}"
        dataset = self.file.create_dataset(name, data=overview.image, compression="gzip", compression_opts=1)
        dataset.attrs.update(header=header_bytes.decode(), pixel_size_A=float(overview.header["pixel_size_A"]),
                             affine_scan_to_overview=overview.affine, acquired=overview.header["acquired"])

    # -- bookkeeping
    def flush(self, accounting: Accounting | None = None, frame_status: np.ndarray | None = None) -> None:
        """Write buffered tables, then the frame status: on disk it never runs ahead of the frames."""
        for dataset, items in ((self.message_header, self._headers), (self.message_time, self._times),
                               (self.message_frame_ids, self._message_ids),
                               (self.rejected_reason, self._rejections)):
            if items:
                start = dataset.shape[0]
                dataset.resize((start + len(items),))
                dataset[start:] = items
                items.clear()
        if self._tables_dirty:
            self.scan_yx[:] = self._scan_yx
            self.timestamp_ns[:] = self._timestamp_ns
            self.frame_message[:] = self._frame_message
            self.frame_slot[:] = self._frame_slot
            self.position_count[:] = self._position_count
            self.beam_centre[:] = self._beam_centre
            self.position_valid[:] = self._position_valid
            self._tables_dirty = False
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
