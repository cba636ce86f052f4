"""Lossless HDF5 captures of a simed-stream series (`docs/capture.md`): the file layout, its
writer and its reader.

One file per series. Frames and position sums are stored one per chunk in the codec of
`codec.py` (Blosc bitshuffle + LZ4, hdf5plugin's filter 32001), compressed by the receiver and
written with direct chunk writes. Every accepted message header is kept verbatim with its
arrival time, so `simed detector --capture` replays the same stream bit for bit. The writer
flushes about once a second; a receiver killed between flushes leaves a file readable up to the
last flush, because `frame_status` (what counts) is only written with a flush.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from simed_stream.codec import compress_frame, hdf5_filter
from simed_stream.kernels import sum_dtype
from simed_stream.protocol import FRAME_DTYPES, OverviewImage, SeriesStart
from simed_stream.records import PositionSum

log = logging.getLogger(__name__)
FORMAT = "simed-capture/1"
MISSING, RECEIVED, REJECTED = 0, 1, 2


@dataclass
class Accounting:
    """Every expected frame is exactly one of received, rejected, dropped at source or missing."""

    frames_expected: int
    received: int = 0
    rejected: int = 0
    dropped_at_source: int = 0
    duplicates: int = 0
    rejected_messages: int = 0
    skipped: int = 0  # detector frames outside the scan by its geometry (before its start, flyback)
    extra: int = 0  # detector frames beyond the scan's last: the series was longer than the scan
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
            "rejected_messages": self.rejected_messages, "skipped": self.skipped, "extra": self.extra,
            "positions_valid": self.positions_valid,
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
        filters = hdf5_filter()
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
        self.position_sum = f.create_dataset("positions/sum", (positions, h, w), sum_dtype(start.dtype),
                                             chunks=(1, h, w), **filters)
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

    def write_position(self, record: PositionSum) -> None:
        """A position's summed frame (its chunk as compressed) and its table entries."""
        self.position_sum.id.write_direct_chunk((record.position, 0, 0), record.chunk)
        self._position_count[record.position] = record.frames_counted
        self._beam_centre[record.position] = record.beam_centre_yx
        self._position_valid[record.position] = record.valid
        self._tables_dirty = True

    def write_overview(self, overview: OverviewImage, header_bytes: bytes) -> None:
        write_overview(self.file, overview, header_bytes)

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


def write_overview(f: h5py.File, overview: OverviewImage, header_bytes: bytes) -> str:
    """`overviews/<id>` with its header; a second image under the same id is kept beside it as
    `<id>-<msg_seq>`. Used while a series is open and for an overview that comes after it closed."""
    name = f"overviews/{overview.header['overview_id']}"
    if name in f:
        name = f"{name}-{overview.msg_seq}"
    dataset = f.create_dataset(name, data=overview.image, compression="gzip", compression_opts=1)
    dataset.attrs.update(header=header_bytes.decode(), pixel_size_A=float(overview.header["pixel_size_A"]),
                         affine_scan_to_overview=overview.affine, acquired=overview.header["acquired"])
    return name


def add_late_overview(path: Path, overview: OverviewImage, header_bytes: bytes) -> list[str]:
    """An overview that came after its series closed, added to the closed capture; returns the
    notes for the series' summary."""
    notes = []
    try:
        with h5py.File(path, "r+") as f:
            write_overview(f, overview, header_bytes)
    except OSError as error:  # e.g. a reader holds the file: keep the image beside it instead
        side = path.with_name(f"{path.stem}.overview-{overview.header['overview_id']}.npy")
        np.save(side, overview.image)
        log.error("could not add the late overview to %s (%s); saved it as %s", path, error, side)
        notes.append(f"late overview saved beside the capture as {side.name}")
    return notes + ["overview arrived after the series closed"]


class CaptureReader:
    """Read access to a capture, also one cut short (importing `codec` registered its filter)."""

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
        self._positions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # read on first use

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

    def first_overview(self) -> tuple[np.ndarray, dict] | None:
        """The overview sent first (lowest msg_seq; the live path uses the first to arrive) and
        its header, or None."""
        overviews = list(self.file["overviews"].values()) if "overviews" in self.file else []
        if not overviews:
            return None
        headers = [json.loads(d.attrs["header"]) for d in overviews]
        first = min(range(len(overviews)), key=lambda i: headers[i].get("msg_seq", 0))
        return overviews[first][:], headers[first]

    @property
    def pixel_mask(self) -> np.ndarray | None:
        return self.file["pixel_mask"][:].astype(bool) if "pixel_mask" in self.file else None

    def position_sum(self, position: int) -> PositionSum:
        """A position's record as the receiver made it: its chunk read as stored, not re-encoded."""
        if self._positions is None:
            g = self.file["positions"]
            self._positions = (g["frame_count"][:], g["beam_centre_yx"][:], g["valid"][:])
        counts, centres, valid = self._positions
        sums = self.file["positions/sum"]
        try:
            filter_mask, chunk = sums.id.read_direct_chunk((position, 0, 0))
        except RuntimeError:  # never written: no frame of this position arrived
            filter_mask, chunk = 1, b""
        if filter_mask:  # not a chunk as `compress_frame` made it (unwritten, or rewritten by a tool)
            chunk = compress_frame(sums[position])
        return PositionSum(self.file.attrs.get("series_id", self.path.stem), position, int(counts[position]),
                           (float(centres[position, 0]), float(centres[position, 1])), bool(valid[position]),
                           chunk, sums.dtype, sums.shape[1:])

    def truth(self) -> dict | None:
        """The ground truth a simulated scan carries (`simed simulate scan`), or None."""
        if "truth" not in self.file:
            return None
        g = self.file["truth"]
        return {"yx_overview_px": g["yx_overview_px"][:], "potential": g["potential"][:],
                "image_hr": g["image_hr"][:],
                "protein": [p.decode() if isinstance(p, bytes) else p for p in g["protein"][:]]}
