"""Writing a capture (`capture.py` is its layout and reader): frames and position sums as their
compressed chunks, message headers verbatim, the tables at each flush — and a full disk survived.

Disk space for the last words of a capture is held from the start: a reserve file beside it
(`.<name>.reserve`: the tables' size and 2 MiB). When a write fails (`No space left on device`,
or any other OSError), the writer releases the reserve, writes what it has into that room — the
tables, the frame status (which frames are in the file), the accounting so far, `state` =
"failed" with the reason — closes the file and writes nothing more. The series goes on in the
receiver (accounting, sums, hand-over); its frames from then on are counted `not_stored`, and
the file's frame status says which frames it holds. A series
whose capture cannot even be opened gets a `NoCapture`: accounted like any other, nothing
written. Without the reserve, HDF5 cannot flush its metadata on a full disk and leaves a file
that no longer opens (tried).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from simed_stream.capture import FORMAT, MISSING, Accounting, write_overview
from simed_stream.codec import hdf5_filter
from simed_stream.files import SpaceReserve
from simed_stream.kernels import sum_dtype
from simed_stream.protocol import OverviewImage, SeriesStart
from simed_stream.records import PositionSum

log = logging.getLogger(__name__)
RESERVE_BYTES = 2 << 20  # beyond the tables: metadata, headers and attributes of one flush
_TABLE_BYTES_PER_FRAME = 8 + 8 + 4 + 4 + 1  # scan_yx, timestamp_ns, frame_message, frame_slot, frame_status
_TABLE_BYTES_PER_POSITION = 4 + 16 + 1


class _Tables:
    """The per-frame and per-position tables, in memory (24 bytes a frame), written whole at a
    flush: h5py's point selections would cost milliseconds per message."""

    def __init__(self, frames: int, positions: int):
        self.arrays = {"scan_yx": np.full((frames, 2), -1, np.int32), "timestamp_ns": np.zeros(frames, np.uint64),
                       "frame_message": np.full(frames, -1, np.int32), "frame_slot": np.full(frames, -1, np.int32),
                       "positions/frame_count": np.zeros(positions, np.int32),
                       "positions/beam_centre_yx": np.full((positions, 2), np.nan),
                       "positions/valid": np.zeros(positions, bool)}
        self.dirty = False

    def create(self, f: h5py.File) -> None:
        for name, array in self.arrays.items():
            fill = -1 if name in ("scan_yx", "frame_message", "frame_slot") else np.nan if "centre" in name else 0
            f.create_dataset(name, array.shape, array.dtype, fillvalue=fill)

    def write(self, f: h5py.File) -> None:
        if self.dirty:
            for name, array in self.arrays.items():
                f[name][...] = array
            self.dirty = False


class CaptureWriter:
    """Owns one capture file; all methods must be called from one thread. `frame_status` and
    `accounting` are the series' own (updated by it, read here at each flush). A frame is marked
    received in `frame_status` only after `write_frames` returned, so on disk the status never
    claims a frame the file lacks, even when the disk filled in the middle of a message."""

    def __init__(self, path: str | Path, start: SeriesStart, start_header_bytes: bytes, receive_time_ns: int,
                 frame_status: np.ndarray, accounting: Accounting):
        self.path, self.start = Path(path), start
        self.failure: str | None = None  # why the capture stopped early
        self.status, self.accounting = frame_status, accounting
        n, positions = start.frames_expected, start.nav_shape[0] * start.nav_shape[1]
        self.tables = _Tables(n, positions)
        self._headers: list[str] = []
        self._times: list[int] = []
        self._message_ids: list[np.ndarray] = []
        self._rejections: list[str] = []
        self._messages = 0  # accepted so far (written or buffered)
        self._reserve = SpaceReserve(self.path.with_name(f".{self.path.name}.reserve"), RESERVE_BYTES
                                     + n * _TABLE_BYTES_PER_FRAME + positions * _TABLE_BYTES_PER_POSITION)
        self.file = None
        try:
            self.file = h5py.File(self.path, "x")  # never overwrite a capture
            self._create(start_header_bytes)
            self.add_message(start_header_bytes, receive_time_ns)
            self.flush()
        except BaseException:
            self._discard()
            raise

    def _create(self, start_header_bytes: bytes) -> None:
        start, f = self.start, self.file
        (h, w), n = start.sig_shape, start.frames_expected
        f.attrs.update(format=FORMAT, series_id=start.series_id, unique_id=start.header["unique_id"],
                       protocol=start.header["protocol"], series_start=start_header_bytes.decode(),
                       state="open", created_unix_s=time.time())
        self.frames = f.create_dataset("frames", (n, h, w), start.dtype, chunks=(1, h, w), **hdf5_filter())
        self.frame_status = f.create_dataset("frame_status", (n,), np.uint8, fillvalue=MISSING)
        self.tables.create(f)
        strings = h5py.string_dtype()
        self.message_header = f.create_dataset("messages/header", (0,), strings, maxshape=(None,), chunks=(256,))
        self.message_time = f.create_dataset("messages/receive_time_ns", (0,), np.uint64, maxshape=(None,), chunks=(256,))
        self.message_frame_ids = f.create_dataset("messages/frame_ids", (0,), h5py.vlen_dtype(np.uint64),
                                                  maxshape=(None,), chunks=(256,))
        self.rejected_reason = f.create_dataset("rejections/reason", (0,), strings, maxshape=(None,), chunks=(64,))
        if start.pixel_mask is not None:
            f.create_dataset("pixel_mask", data=start.pixel_mask)
        positions = start.nav_shape[0] * start.nav_shape[1]
        self.position_sum = f.create_dataset("positions/sum", (positions, h, w), sum_dtype(start.dtype),
                                             chunks=(1, h, w), **hdf5_filter())

    def _discard(self) -> None:
        """A capture that could not be set up: nothing of it is left behind."""
        if self.file is not None:
            try:
                self.file.close()
            except Exception:  # a half-made file on a full disk may not close: it is removed anyway
                pass
            self.path.unlink(missing_ok=True)
        self._reserve.release()

    # -- frames and messages
    def add_message(self, header_bytes: bytes, receive_time_ns: int, frame_ids: np.ndarray | None = None) -> int:
        """Record an accepted message header verbatim, with the frame ids it carried (all of
        them, duplicates of earlier frames included, so a replay can rebuild it); returns its index."""
        self._messages += 1
        if self.failure:
            return self._messages - 1
        self._headers.append(header_bytes.decode())
        self._times.append(receive_time_ns)
        self._message_ids.append(np.zeros(0, np.uint64) if frame_ids is None else np.asarray(frame_ids, np.uint64))
        return self._messages - 1

    def write_frames(self, message_index: int, frame_ids: np.ndarray, chunks: list[bytes], scan_yx: np.ndarray,
                     timestamps_ns: np.ndarray, slots_in_message: np.ndarray) -> int:
        """Write pre-compressed frames now, their tables at the next flush; returns how many are
        in the file (fewer when the disk filled)."""
        if self.failure:
            return 0
        ids = frame_ids.astype(np.int64)
        write_chunk, stored = self.frames.id.write_direct_chunk, 0
        try:
            for frame_id, chunk in zip(ids.tolist(), chunks):
                write_chunk((frame_id, 0, 0), chunk)
                stored += 1
        except OSError as error:
            self._fail(error)
        ids = ids[:stored]
        tables = self.tables.arrays
        tables["scan_yx"][ids] = scan_yx[:stored]
        tables["timestamp_ns"][ids] = timestamps_ns[:stored]
        tables["frame_message"][ids] = message_index
        tables["frame_slot"][ids] = slots_in_message[:stored]
        self.tables.dirty = True
        return stored

    def add_rejection(self, reason: str) -> None:
        if not self.failure:
            self._rejections.append(reason)

    def write_position(self, record: PositionSum) -> None:
        """A position's summed frame (its chunk as compressed) and its table entries."""
        if self.failure:
            return
        try:
            self.position_sum.id.write_direct_chunk((record.position, 0, 0), record.chunk)
        except OSError as error:
            self._fail(error)
            return
        tables = self.tables.arrays
        tables["positions/frame_count"][record.position] = record.frames_counted
        tables["positions/beam_centre_yx"][record.position] = record.beam_centre_yx
        tables["positions/valid"][record.position] = record.valid
        self.tables.dirty = True

    def write_overview(self, overview: OverviewImage, header_bytes: bytes) -> None:
        if self.failure:
            return
        try:
            write_overview(self.file, overview, header_bytes)
        except OSError as error:
            self._fail(error)

    # -- bookkeeping
    def flush(self) -> None:
        """Write buffered tables, then the frame status: on disk it never runs ahead of the frames."""
        if self.failure:
            return
        try:
            self._write_all()
        except OSError as error:
            self._fail(error)

    def _write_all(self) -> None:
        for dataset, items in ((self.message_header, self._headers), (self.message_time, self._times),
                               (self.message_frame_ids, self._message_ids),
                               (self.rejected_reason, self._rejections)):
            if items:
                start = dataset.shape[0]
                dataset.resize((start + len(items),))
                dataset[start:] = items
                items.clear()
        self.tables.write(self.file)
        self.file.flush()  # frames before the status that declares them
        self.frame_status[:] = self.status
        self.file.attrs["accounting"] = json.dumps(self.accounting.as_dict())
        self.file.flush()

    def close(self, end_status: str, notes: list[str], descan_plane: np.ndarray | None) -> None:
        if self.failure:
            return
        try:
            if descan_plane is not None:
                self.file.create_dataset("positions/descan_plane_yx", data=descan_plane)
            self.file.attrs.update(end_status=end_status, notes=json.dumps(notes), closed_unix_s=time.time())
            self._write_all()
            self.file.attrs["state"] = "closed"
            self.file.close()
        except OSError as error:
            self._fail(error)
            return
        self._reserve.release()

    def _fail(self, error: OSError) -> None:
        """Stop writing; leave the file readable with what it holds (in the reserve's room)."""
        # HDF5's own message is a stack of lines; the system's reason is the one to tell
        self.failure = os.strerror(error.errno) if error.errno else str(error).splitlines()[0][:300]
        log.error("capture %s: %s; closing it with what it holds, the series goes on without it",
                  self.path, self.failure)
        self._reserve.release()
        try:
            self.file.attrs.update(state="failed", failure=self.failure, closed_unix_s=time.time())
            self._write_all()
        except Exception as again:  # noqa: BLE001 - the file is closed below whatever happened
            log.error("capture %s could not be closed cleanly (%s): it may not open", self.path, again)
        finally:
            try:
                self.file.close()
            except Exception:  # noqa: BLE001
                pass


class NoCapture:
    """A series whose capture could not be opened (e.g. the disk is full): it is received and
    accounted like any other; nothing is written."""

    def __init__(self, path: Path, failure: str):
        self.path, self.failure = path, failure

    def add_message(self, *args) -> int:
        return -1

    def write_frames(self, *args) -> int:
        return 0

    def add_rejection(self, reason: str) -> None:
        pass

    def write_position(self, record: PositionSum) -> None:
        pass

    def write_overview(self, overview: OverviewImage, header_bytes: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, end_status: str, notes: list[str], descan_plane: np.ndarray | None) -> None:
        pass
