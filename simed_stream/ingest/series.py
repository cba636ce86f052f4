"""One open series in the receiver: its frames checked against its series_start, every frame
accounted for, its capture written, its position sums kept — until it closes into a summary."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from simed_stream.capture import RECEIVED, REJECTED, Accounting
from simed_stream.capture_writer import CaptureWriter, NoCapture
from simed_stream.codec import compress_frames
from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.ingest.stages import StageClock
from simed_stream.ingest.sums import PositionSums
from simed_stream.protocol import Frames, OverviewImage, SeriesEnd, SeriesStart
from simed_stream.records import PositionSum


@dataclass
class SeriesSummary:
    series_id: str
    path: Path
    end_status: str  # series_end's status, or "incomplete"
    accounting: dict
    notes: list[str] = field(default_factory=list)
    overview: bool = False
    ingest_seconds: float = 0.0  # first frame received to last frame processed (written and summed)


class _TimedPool:
    """An executor whose tasks count as `stage` on the thread that runs them."""

    def __init__(self, pool: Executor, stages: StageClock, stage: str):
        self.pool, self.stages, self.stage = pool, stages, stage

    def submit(self, function, *args):
        return self.pool.submit(self.stages.timed(self.stage, function), *args)


class OpenSeries:
    """Lives in the receiver's processing thread only. Times on the wire clock are `*_wire_ns`."""

    def __init__(self, start: SeriesStart, header_bytes: bytes, received_ns: int, wire_ns: int,
                 settings: ReceiverSettings, path: Path, compressor: Executor,
                 on_sum: Callable[[PositionSum], None], stages: StageClock):
        self.start = start
        self.stages = stages
        self.status = np.zeros(start.frames_expected, np.uint8)
        self.accounting = Accounting(start.frames_expected, positions_total=start.nav_shape[0] * start.nav_shape[1])
        self.last_heard_wire_ns = wire_ns
        self.end: SeriesEnd | None = None
        self.ended_wire_ns = 0
        self.overview_received = False
        self.first_frame_ns = self.last_frame_done_ns = 0
        self.compressor, self.on_sum = compressor, on_sum
        # the pool first: when there is no memory for it, no capture is started
        self.sums = PositionSums(start, settings.max_pending_positions, settings.beam_radius_px, self.accounting,
                                 compressor, self._sum_done, stages)
        try:
            self.writer: CaptureWriter | NoCapture = CaptureWriter(path, start, header_bytes, received_ns, self.status,
                                                                   self.accounting)
        except OSError as error:  # e.g. a full disk: the series is received and accounted all the same
            self.writer = NoCapture(path, f"no capture: {error.strerror or error}")
        self.capture_failure_told = False
        self.last_flush = time.monotonic()

    @property
    def capture_failure(self) -> str | None:
        """Why this series' capture stopped early or never started (e.g. a full disk), or None."""
        return self.writer.failure

    def _sum_done(self, record: PositionSum) -> None:
        with self.stages("write"):
            self.writer.write_position(record)
        self.on_sum(record)

    def problem_with(self, message: Frames) -> str | None:
        """Why a frames message does not fit this series, or None."""
        start, ids = self.start, message.frame_ids
        if tuple(message.header["shape"]) != start.sig_shape:
            return f"frame shape {message.header['shape']} differs from the series' {list(start.sig_shape)}"
        if message.pixels.dtype != start.dtype:
            return f"frame dtype {message.pixels.dtype.str} differs from the series' {start.dtype.str}"
        if int(ids.max()) >= start.frames_expected:
            return f"frame id {int(ids.max())} beyond the {start.frames_expected} frames expected"
        if len(np.unique(ids)) != len(ids):
            return "frame ids repeat within one message"
        ny, nx = start.nav_shape
        y, x = message.scan_yx[:, 0], message.scan_yx[:, 1]
        if (y < 0).any() or (y >= ny).any() or (x < 0).any() or (x >= nx).any():
            return f"scan position outside the {ny}×{nx} scan"
        return None

    def add_frames(self, message: Frames, header_bytes: bytes, received_ns: int) -> tuple[int, int, int]:
        """Capture and sum the frames not received before: (new frames, their bytes, duplicates).

        A duplicate message carries nothing new; a partly new one keeps only the new frames, each
        with its place in the message as sent (for a verbatim replay)."""
        index = message.frame_ids.astype(np.int64)
        fresh = self.status[index] != RECEIVED
        duplicates = int((~fresh).sum())
        self.accounting.duplicates += duplicates
        if not fresh.any():
            return 0, 0, duplicates
        with self.stages("copy"):
            slots_in_message = np.flatnonzero(fresh).astype(np.int32)
            if duplicates:  # only then a copy: the new frames alone
                index, pixels = index[fresh], message.pixels[fresh]
                scan_yx, stamps = message.scan_yx[fresh], message.timestamps_ns[fresh]
            else:  # the message's own arrays, in ZeroMQ's buffer
                pixels, scan_yx, stamps = message.pixels, message.scan_yx, message.timestamps_ns
        with self.stages("compress"):  # (nothing to compress for a capture that failed)
            chunks = [] if self.writer.failure else compress_frames(
                pixels, _TimedPool(self.compressor, self.stages, "compress"))
        with self.stages("write"):
            message_index = self.writer.add_message(header_bytes, received_ns, message.frame_ids)
            stored = self.writer.write_frames(message_index, index.astype(np.uint64), chunks, scan_yx, stamps,
                                              slots_in_message)
        self.accounting.not_stored += len(index) - stored
        self.accounting.rejected -= int((self.status[index] == REJECTED).sum())
        self.accounting.received += len(index)
        self.status[index] = RECEIVED
        self.sums.add(pixels, scan_yx)
        self.first_frame_ns = self.first_frame_ns or received_ns
        self.last_frame_done_ns = time.time_ns()
        return len(index), pixels.nbytes, duplicates

    def reject(self, frame_ids: np.ndarray | None, reason: str) -> int:
        """Account a rejected message of this series; returns how many of its frames are newly rejected."""
        frames = 0
        if frame_ids is not None:
            ids = frame_ids.astype(np.int64)
            ids = ids[(ids >= 0) & (ids < len(self.status))]
            ids = np.unique(ids[self.status[ids] != RECEIVED])
            self.accounting.rejected += int((self.status[ids] != REJECTED).sum())
            self.status[ids] = REJECTED
            frames = len(ids)
        self.accounting.rejected_messages += 1
        self.writer.add_rejection(reason)
        return frames

    def add_overview(self, message: OverviewImage, header_bytes: bytes, received_ns: int) -> None:
        self.overview_received = True
        self.writer.add_message(header_bytes, received_ns)
        self.writer.write_overview(message, header_bytes)

    def add_end(self, message: SeriesEnd, header_bytes: bytes, received_ns: int, wire_ns: int) -> None:
        self.end, self.ended_wire_ns = message, wire_ns
        self.accounting.dropped_at_source = message.frames_dropped_at_source
        self.accounting.skipped, self.accounting.extra = message.frames_skipped, message.frames_beyond_scan
        self.writer.add_message(header_bytes, received_ns)

    def flush_if_due(self, interval_s: float) -> None:
        now = time.monotonic()
        if now - self.last_flush > interval_s:
            self.sums.write_done()
            with self.stages("write"):
                self.writer.flush()
            self.last_flush = now

    def close(self, problem: str | None) -> SeriesSummary:
        """Finish the position sums, write what the capture must say, close it."""
        self.sums.finish_all()
        notes = ([problem] if problem else []) + (self.end.notes if self.end is not None else [])
        if not self.overview_received:
            notes.append("no overview image received")
        if self.sums.late_frames:
            notes.append(f"{self.sums.late_frames} frame(s) arrived after their position's sum was written")
        accounting = self.accounting
        if accounting.missing < 0:
            notes.append("detector reports more frames dropped at source than were not received")
        if accounting.missing:
            notes.append(f"{accounting.missing} frame(s) missing")
        if accounting.extra:
            notes.append(f"{accounting.extra} frame(s) beyond the scan: the series was longer than the scan "
                         "(not captured)")
        plane, why_not = self.sums.descan_plane()
        if why_not:
            notes.append(why_not)
        end_status = self.end.status if self.end is not None else "incomplete"
        if self.writer.failure:
            notes.append(f"capture: {self.writer.failure}; {accounting.not_stored} frame(s) received but not "
                         "stored (frame_status says which frames the file holds)")
        self.writer.close(end_status, notes, plane)
        return SeriesSummary(self.start.series_id, self.writer.path, end_status, accounting.as_dict(), notes,
                             self.overview_received,
                             max(0.0, (self.last_frame_done_ns - self.first_frame_ns) / 1e9))
