"""Lossless HDF5 captures of a simed-stream series (`docs/capture.md`): the file layout, the
accounting it records, and its reader (the writer is `capture_writer.py`).

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
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from simed_stream.codec import compress_frame
from simed_stream.protocol import FRAME_DTYPES, OverviewImage
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
    not_stored: int = 0  # received, but not in the capture (its disk was full)
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
            "dropped_at_source": self.dropped_at_source, "missing": self.missing, "not_stored": self.not_stored,
            "duplicates": self.duplicates, "rejected_messages": self.rejected_messages, "skipped": self.skipped,
            "extra": self.extra, "positions_valid": self.positions_valid,
            "positions_total": self.positions_total, "coverage": round(self.coverage, 6),
        }


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
        try:
            np.save(side, overview.image)
        except OSError as again:  # a full disk: the image is lost, and said so
            log.error("could not add the late overview to %s (%s) nor save it beside (%s)", path, error, again)
            return notes + [f"late overview not kept: {again.strerror or again}"]
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
