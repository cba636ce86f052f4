"""One series' sums per scan position: a bounded pool of partial sums, the beam centre of each
finished sum, and its hand-over, compressed, as a `PositionSum` record."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future
from typing import Callable

import numpy as np

from simed_stream import kernels
from simed_stream.capture import Accounting
from simed_stream.codec import compress_frame
from simed_stream.ingest.stages import StageClock
from simed_stream.protocol import SeriesStart
from simed_stream.records import PositionSum

_MAX_PENDING = 64  # compressed sums waiting to be written: bounds memory when compression lags
_NO_CENTRE = (float("nan"), float("nan"))


class BeamSearch:
    """The direct-beam centre of a position's sum, hot pixels masked (the raw sum is what is kept).

    Descan drift is slow, so the search starts in a window around the previous position's
    centre (~1/50 of a 256² frame); when the beam is not found well inside it, the whole frame
    is searched."""

    def __init__(self, radius_px: float, bad_pixels: np.ndarray | None):
        self.radius_px, self.bad_pixels = radius_px, bad_pixels
        self.last: tuple[float, float] | None = None

    def centre(self, frame_sum: np.ndarray) -> tuple[float, float]:
        radius = self.radius_px
        if self.last is not None:
            half = int(2 * radius) + 8
            cy, cx = (int(round(v)) for v in self.last)
            y0, x0 = max(0, cy - half), max(0, cx - half)
            window = frame_sum[y0 : cy + half + 1, x0 : cx + half + 1]
            wy, wx = kernels.beam_centre(self._masked(window, y0, x0), radius)
            if (np.isfinite(wy) and np.isfinite(wx) and radius <= wy <= window.shape[0] - 1 - radius
                    and radius <= wx <= window.shape[1] - 1 - radius):
                self.last = (wy + y0, wx + x0)
                return self.last
        centre = kernels.beam_centre(self._masked(frame_sum, 0, 0), radius)
        if np.isfinite(centre).all():
            self.last = centre
        return centre

    def _masked(self, image: np.ndarray, y0: int, x0: int) -> np.ndarray:
        if self.bad_pixels is None:
            return image
        mask = self.bad_pixels[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]]
        return kernels.apply_pixel_mask(image, mask) if mask.any() else image


class PositionSums:
    """Sums of one series' frames per scan position, in `pool_positions` reusable slots.

    A position is done when all its frames are in — or, incomplete, when its slot is needed for
    a new position or the series closes. Then its beam is found, it is compressed in
    `compressor` (another thread) straight from its slot, which is reused once that is done,
    and, in order of completion, handed to `on_done`. A frame for a position already done is
    kept in the capture but not summed (`late_frames`)."""

    def __init__(self, start: SeriesStart, pool_positions: int, beam_radius_px: float, accounting: Accounting,
                 compressor: Executor, on_done: Callable[[PositionSum], None], stages: StageClock):
        ny, nx = start.nav_shape
        self.series_id, self.nx, self.per_position = start.series_id, nx, start.frames_per_position
        self.dtype, self.shape = kernels.sum_dtype(start.dtype), start.sig_shape
        slots = pool_positions + _MAX_PENDING + 1  # open positions, and sums being compressed
        self.pool = np.zeros((slots, *self.shape), self.dtype)
        self.pool_counts = np.zeros(slots, np.int64)
        self.slot_of: dict[int, int] = {}  # position -> pool slot, in arrival order (oldest first)
        self.free_slots = list(range(slots - 1, -1, -1))
        self.max_open = pool_positions
        self.done = np.zeros(ny * nx, bool)
        self.centres = np.full((ny * nx, 2), np.nan)
        self.valid = np.zeros(ny * nx, bool)
        self.late_frames = 0
        bad = start.pixel_mask.astype(bool) if start.pixel_mask is not None else None
        self.beam = BeamSearch(beam_radius_px, bad)
        self.accounting, self.compressor, self.on_done, self.stages = accounting, compressor, on_done, stages
        self._compress = stages.timed("sum_compress", compress_frame)
        # (compressed chunk, position, frames, centre, valid, slot), in order of completion
        self._pending: deque[tuple[Future, int, int, tuple[float, float], bool, int]] = deque()

    def add(self, pixels: np.ndarray, scan_yx: np.ndarray) -> None:
        """Add frames (in message order) to their positions' sums; finish the positions they complete."""
        positions = scan_yx[:, 0].astype(np.int64) * self.nx + scan_yx[:, 1]
        slots = np.full(len(positions), -1, np.int64)
        summed = 0  # frames before this index are already added to the pool
        for i, position in enumerate(positions.tolist()):
            if self.done[position]:
                self.late_frames += 1  # its sum was already written as incomplete; the frame itself is captured
                continue
            slot = self.slot_of.get(position)
            if slot is None:
                if len(self.slot_of) >= self.max_open:
                    # add what this message assigned so far before a slot is evicted and reused
                    with self.stages("sums"):
                        kernels.accumulate_positions(pixels[summed:i], slots[summed:i], self.pool, self.pool_counts)
                    summed = i
                    self._finish(next(iter(self.slot_of)), complete=False)
                slot = self._free_slot()
                self.slot_of[position] = slot
            slots[i] = slot
        with self.stages("sums"):
            kernels.accumulate_positions(pixels[summed:], slots[summed:], self.pool, self.pool_counts)
        for position in set(positions.tolist()):
            slot = self.slot_of.get(position)
            if slot is not None and self.pool_counts[slot] >= self.per_position:
                self._finish(position, complete=True)

    def finish_all(self) -> None:
        """At close: the positions still open are done, incomplete; everything is written."""
        for position in list(self.slot_of):
            self._finish(position, complete=False)
        while self._pending:
            self.write_done(wait=True)
        # the pool (tens of MB, touched as positions came) goes now: `on_done`, a method of the
        # series, makes a reference cycle that only Python's rare full collection would free, and
        # a soak saw a dozen closed series' pools waiting for it (RSS up ~6 MB a minute)
        self.pool = self.pool_counts = None
        self.on_done = None

    def _free_slot(self) -> int:
        """A slot for a new position: a free one, or the first whose sum is compressed by now."""
        while not self.free_slots:
            self.write_done(wait=True, at_most=1)
        return self.free_slots.pop()

    def _finish(self, position: int, complete: bool) -> None:
        slot = self.slot_of.pop(position)
        frame_sum = self.pool[slot]  # compressed from here: the slot is reused only after that
        count = int(self.pool_counts[slot])
        with self.stages("centre"):
            centre = self.beam.centre(frame_sum) if count else _NO_CENTRE
        valid = complete and bool(np.isfinite(centre).all())
        self.centres[position], self.valid[position], self.done[position] = centre, valid, True
        self.accounting.positions_valid += int(valid)
        chunk = self.compressor.submit(self._compress, frame_sum)
        self._pending.append((chunk, position, count, (float(centre[0]), float(centre[1])), valid, slot))
        self.write_done(wait=len(self._pending) > _MAX_PENDING)

    def write_done(self, wait: bool = False, at_most: int | None = None) -> None:
        """Hand over the sums compressed so far, in order, and free their slots; `wait` for those
        beyond half the bound (or for `at_most` of them)."""
        handed = 0
        while self._pending and (wait or self._pending[0][0].done()) and (at_most is None or handed < at_most):
            future, position, count, centre, valid, slot = self._pending.popleft()
            record = PositionSum(self.series_id, position, count, centre, valid, future.result(), self.dtype,
                                 self.shape)
            self.pool_counts[slot] = 0
            self.free_slots.append(slot)
            handed += 1
            self.on_done(record)
            wait = wait and (at_most is not None or len(self._pending) > _MAX_PENDING // 2)

    def descan_plane(self) -> tuple[np.ndarray | None, str | None]:
        """The robust plane through the valid beam centres, or why there is none."""
        if self.valid.sum() < 3:
            return None, None
        ny = len(self.valid) // self.nx
        try:
            return kernels.fit_descan_plane(self.centres.reshape(ny, self.nx, 2), self.valid.reshape(ny, self.nx)), None
        except ValueError as error:
            return None, f"descan plane not fitted: {error}"
