"""Scan synchronisation for detectors that send no scan positions: detector frame k of a series
→ its frame id and scan (y, x), or why it belongs to no position.

The geometry comes from the run's settings (`ScanSync`): `start_frame` frames before the first
position are dropped; then each line is `nx × frames_per_position` frames followed by
`flyback_frames` frames recorded while the beam flies back (dropped); raster lines run left to
right, serpentine odd lines right to left. Frame ids count the scan's frames in acquisition order
(as simed-stream/1 numbers them), so frame id // frames_per_position is the position's place in
the scan order. A frame after the last line is *extra*: counted, never folded back onto the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simed_stream.detectors.settings import ScanSync

IN_SCAN, SKIPPED, EXTRA = 0, 1, 2


@dataclass(frozen=True)
class Placed:
    """Where frames go: `kind` per frame (IN_SCAN, SKIPPED, EXTRA); ids and (y, x) valid where IN_SCAN."""

    kind: np.ndarray  # (n,) u1
    frame_ids: np.ndarray  # (n,) u8
    scan_yx: np.ndarray  # (n, 2) i4


class ScanMap:
    def __init__(self, sync: ScanSync):
        if sync.shape is None:
            raise ValueError("a scan map needs scan.shape")
        self.sync = sync
        self.ny, self.nx = sync.shape
        self.per_position = sync.frames_per_position
        self.line_frames = self.nx * self.per_position + sync.flyback_frames
        self.frames_expected = self.ny * self.nx * self.per_position
        # the last line's flyback may or may not be recorded: the scan is whole within this range
        self.detector_frames_min = sync.start_frame + (self.ny - 1) * self.line_frames + self.nx * self.per_position
        self.detector_frames_max = sync.start_frame + self.ny * self.line_frames

    def place(self, detector_frames: np.ndarray) -> Placed:
        k = np.asarray(detector_frames, np.int64) - self.sync.start_frame
        line, within = np.divmod(np.maximum(k, 0), self.line_frames)
        column, sub = np.divmod(within, self.per_position)
        kind = np.full(len(k), IN_SCAN, np.uint8)
        kind[(k < 0) | (within >= self.nx * self.per_position)] = SKIPPED
        kind[(k >= 0) & (line >= self.ny)] = EXTRA
        x = column
        if self.sync.pattern == "serpentine":
            x = np.where(line % 2 == 1, self.nx - 1 - column, column)
        inside = kind == IN_SCAN
        ids = np.where(inside, (line * self.nx + column) * self.per_position + sub, 0).astype(np.uint64)
        yx = np.where(inside[:, None], np.stack([line, x], axis=1), -1).astype(np.int32)
        return Placed(kind, ids, yx)

    def place_one(self, detector_frame: int) -> tuple[int, int, int, int]:
        """`place` for one frame, without numpy's per-call cost: (kind, frame id, y, x)."""
        k = detector_frame - self.sync.start_frame
        if k < 0:
            return SKIPPED, 0, -1, -1
        line, within = divmod(k, self.line_frames)
        if line >= self.ny:
            return EXTRA, 0, -1, -1
        if within >= self.nx * self.per_position:
            return SKIPPED, 0, -1, -1
        column, sub = divmod(within, self.per_position)
        x = self.nx - 1 - column if self.sync.pattern == "serpentine" and line % 2 == 1 else column
        return IN_SCAN, (line * self.nx + column) * self.per_position + sub, line, x

    def detector_frame(self, frame_ids: np.ndarray) -> np.ndarray:
        """The inverse of `place` for frames in the scan: frame id → detector frame index."""
        position, sub = np.divmod(np.asarray(frame_ids, np.int64), self.per_position)
        line, column = np.divmod(position, self.nx)
        return self.sync.start_frame + line * self.line_frames + column * self.per_position + sub

    def describe(self) -> str:
        s = self.sync
        return (f"scan {self.ny}x{self.nx} {s.pattern}, {self.per_position} frame(s) per position, "
                f"{s.flyback_frames} flyback frame(s) per line, start frame {s.start_frame}: "
                f"{self.detector_frames_min}" + (f"–{self.detector_frames_max}"
                                                  if self.detector_frames_max != self.detector_frames_min else "")
                + " detector frames")
