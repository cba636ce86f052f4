"""The receiver: takes a simed-stream/1 data stream, accounts for every frame, sums and centres
each scan position and writes a lossless capture per series.

Two threads. The *receive* thread only receives and decodes (ZeroMQ and JSON release the GIL
or are cheap) and puts messages on a bounded queue. The *processing* thread owns all series
state: series-level validation, accounting, compression of frames (Blosc releases the GIL; half
of each message and the position sums go to a second thread),
direct chunk writes, per-position sums and beam centres (numba, GIL released).

Back-pressure, not loss: when processing falls behind, the queue fills, the receive thread
blocks, ZeroMQ's receive buffer (RCVHWM messages) fills and then the detector's send buffer;
a real detector then drops frames at source and says so in `series_end`. Nothing accepted is
ever dropped. Memory is bounded by (queue_messages + rcvhwm) × max_message_bytes plus
max_pending_positions partial position sums.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import ThreadPoolExecutor
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from simed_stream import kernels
from simed_stream.capture import (RECEIVED, REJECTED, Accounting, CaptureWriter, compress_frame, compress_frames,
                                  position_sum_dtype)
from simed_stream.protocol import (DEFAULT_DATA_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES, Frames, Heartbeat,
                                   OverviewImage, ProtocolError, SeriesEnd, SeriesStart, decode)

log = logging.getLogger(__name__)


@dataclass
class ReceiverSettings:
    capture_dir: Path
    data_endpoint: str = DEFAULT_DATA_ENDPOINT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    queue_messages: int = 8
    rcvhwm: int = 8
    series_timeout_s: float = 10.0
    overview_grace_s: float = 5.0
    beam_radius_px: float = 8.0
    max_pending_positions: int = 256
    max_open_series: int = 4
    flush_interval_s: float = 1.0
    capture: bool = True


@dataclass
class SeriesSummary:
    series_id: str
    path: Path | None
    end_status: str
    accounting: dict
    notes: list[str] = field(default_factory=list)
    overview: bool = False
    ingest_seconds: float = 0.0  # first frame received to last frame processed (written and summed)


class _Series:
    """State of one open series; lives in the processing thread only."""

    def __init__(self, start: SeriesStart, header_bytes: bytes, now_ns: int, wire_ns: int,
                 settings: ReceiverSettings, path: Path | None):
        self.start = start
        self.status = np.zeros(start.frames_expected, np.uint8)
        self.accounting = Accounting(start.frames_expected, positions_total=start.nav_shape[0] * start.nav_shape[1])
        # wire clock (see Receiver._wire_ns) of this series' last message and of its series_end:
        # timeouts measure silence on the wire, never the processing thread's own stalls
        self.last_heard_ns = wire_ns
        self.end: SeriesEnd | None = None
        self.ended_at_ns = 0
        self.overview_received = False
        self.notes: list[str] = []
        ny, nx = start.nav_shape
        self.frame_counts = np.zeros(ny * nx, np.int64)
        self.flushed_positions = np.zeros(ny * nx, bool)
        self.centres = np.full((ny * nx, 2), np.nan)
        self.valid = np.zeros(ny * nx, bool)
        h, w = start.sig_shape
        self.pool = np.zeros((settings.max_pending_positions, h, w), position_sum_dtype(start.dtype))
        self.pool_counts = np.zeros(settings.max_pending_positions, np.int64)
        self.slot_of: dict[int, int] = {}  # position -> pool slot, in arrival order (oldest first)
        self.free_slots = list(range(settings.max_pending_positions - 1, -1, -1))
        self.late_frames = 0
        self.last_centre: tuple[float, float] | None = None
        self.pending_sums: list = []  # (position, future of its compressed sum, count, centre, valid)
        self.first_frame_ns = 0
        self.last_frame_done_ns = 0
        self.bad_pixels = start.pixel_mask.astype(bool) if start.pixel_mask is not None else None
        self.writer = CaptureWriter(path, start, header_bytes, now_ns) if path is not None else None
        self.last_flush = time.monotonic()


def _safe_name(series_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in series_id)[:128] or "series"


class Receiver:
    """Receive, validate, account, process and capture; use as a context manager.

    `on_series_closed(summary)` is called from the processing thread when a series closes.
    `listener`, when given, hears `series_started(start)`, `position(series_id, position,
    compressed_sum, frames_counted, beam_centre_yx, valid)` for every position sum as it is
    written, and `overview(series_id, message)`.
    """

    def __init__(self, settings: ReceiverSettings, on_series_closed: Callable[[SeriesSummary], None] | None = None,
                 listener=None):
        self.settings = settings
        # the live pipeline's hooks (`series_started`, `position`, `overview`); called from the
        # processing thread, so they must only hand data over, and they can never stop ingest
        self.listener = listener
        settings.capture_dir = Path(settings.capture_dir)
        settings.capture_dir.mkdir(parents=True, exist_ok=True)
        self.on_series_closed = on_series_closed
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_messages)
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._series: dict[str, _Series] = {}
        self.closed: list[SeriesSummary] = []
        self._closed_ids: set[str] = set()
        self._lock = threading.Lock()
        self._counters = dict(messages=0, rejected_messages=0, frames_received=0, frames_rejected=0,
                              duplicates=0, msg_seq_gaps=0, heartbeats=0, bytes=0, internal_errors=0)
        self.last_internal_error: str | None = None
        self._last_seq: int | None = None
        self._lag_s = 0.0
        self._blocked_ns = 0  # receive thread: time spent blocked on a full queue (see _wire_ns)
        self._wire_now_ns = 0  # processing thread: the wire clock of the item being handled
        self._threads: list[threading.Thread] = []
        self._rate_window: list[tuple[float, int]] = []
        self._rejection_logs = 0
        self.error: BaseException | None = None
        # the processing thread compresses half of each message, this pool's thread the other
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="simed-compress")

    # -- lifecycle
    def __enter__(self) -> "Receiver":
        if not self._threads:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        kernels.warm_up()  # before the first series can arrive, not while its frames queue
        socket = self._context.socket(zmq.PULL)
        socket.setsockopt(zmq.RCVHWM, self.settings.rcvhwm)
        # hard cap per part: beyond it ZeroMQ drops the connection (and reconnects); between the
        # soft limit and this, a message is received and rejected with its frames accounted for
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.settings.max_message_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.settings.data_endpoint)
        except zmq.ZMQError:
            socket.close(0)
            raise
        self._socket = socket
        self._threads = [threading.Thread(target=self._receive_loop, name="simed-receive", daemon=True),
                         threading.Thread(target=self._process_loop, name="simed-process", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[SeriesSummary]:
        """Stop receiving, process what is queued, close every open series."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._socket.close(0)
        self._context.term()
        self._pool.shutdown()
        return self.closed

    def wait_for_series(self, count: int, timeout_s: float) -> list[SeriesSummary]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError("receiver processing failed") from self.error
            with self._lock:
                if len(self.closed) >= count:
                    return list(self.closed)
            time.sleep(0.02)
        raise TimeoutError(f"{len(self.closed)} of {count} series closed within {timeout_s} s")

    def status(self) -> dict:
        with self._lock:
            now = time.monotonic()
            window = [(t, n) for t, n in self._rate_window if now - t < 2.0]
            fps = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 1 and window[-1][0] > window[0][0] else 0.0
            open_series = {sid: s.accounting.as_dict() for sid, s in self._series.items()}
            return dict(self._counters, queue_depth=self._queue.qsize(), queue_capacity=self.settings.queue_messages,
                        lag_s=round(self._lag_s, 3), frames_per_s=round(fps, 1), open_series=open_series,
                        closed_series=[s.series_id for s in self.closed])

    # -- receive thread
    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                if self._queue.empty():  # all received so far is handled: the wire was quiet until now
                    self._put(("tick", None, None, time.time_ns(), self._wire_ns()))
                continue
            parts = self._socket.recv_multipart(copy=False)
            now_ns, wire_ns = time.time_ns(), self._wire_ns()
            buffers = [part.buffer for part in parts]
            try:
                message = decode(buffers, self.settings.max_message_bytes)
            except ProtocolError as error:
                self._put(("rejected", error, None, now_ns, wire_ns))
                continue
            except Exception as error:  # a decoder gap must never take the receiver down
                log.exception("unexpected error decoding a message")
                self._put(("rejected", ProtocolError(f"malformed message ({error.__class__.__name__})"), None, now_ns,
                           wire_ns))
                continue
            self._put(("message", message, bytes(buffers[0]), now_ns, wire_ns))
        self._put(("stop", None, None, time.time_ns(), self._wire_ns()))

    def _wire_ns(self) -> int:
        """The wire clock: monotonic time that the receive thread spent listening, i.e. not
        blocked by back-pressure. While it is blocked, the detector's messages wait in ZeroMQ's
        buffers unseen, so that time must not count as silence."""
        return time.monotonic_ns() - self._blocked_ns

    def _put(self, item) -> None:
        """Queue an item, waiting while the queue is full (back-pressure); only a tick may be
        dropped, and only a dead processing thread makes us give up."""
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        blocked_since = time.monotonic_ns()
        try:
            while True:
                try:
                    self._queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    if item[0] == "tick" or not self._threads[1].is_alive():
                        return
        finally:
            self._blocked_ns += time.monotonic_ns() - blocked_since

    # -- processing thread
    def _process_loop(self) -> None:
        try:
            stopping = False
            while not stopping or not self._queue.empty():
                try:
                    item = self._queue.get(timeout=0.1) if stopping else self._queue.get()
                except queue.Empty:
                    break
                kind, payload, header_bytes, t_ns, self._wire_now_ns = item
                self._lag_s = max(0.0, (time.time_ns() - t_ns) / 1e9)
                if kind == "stop":
                    stopping = True  # then drain what is still queued
                    continue
                try:
                    if kind == "rejected":
                        self._reject(payload)
                    elif kind == "message":
                        self._handle(payload, header_bytes, t_ns)
                    self._housekeeping()
                except Exception as error:  # a bug or a disk error on one message: log, count, go on
                    log.exception("error while handling a %s message", kind)
                    with self._lock:
                        self._counters["internal_errors"] += 1
                    self.last_internal_error = f"{error.__class__.__name__}: {error}"
            for series_id in list(self._series):
                self._close(series_id, "receiver stopped before the series ended")
        except BaseException as error:  # keep the cause for the caller; never lose it silently
            log.exception("processing thread failed")
            self.error = error
            for series_id in list(self._series):
                try:
                    self._close(series_id, f"receiver error: {error}")
                except Exception:
                    log.exception("could not close series %s", series_id)

    def _handle(self, message, header_bytes: bytes, t_ns: int) -> None:
        with self._lock:
            self._counters["messages"] += 1
        self._check_sequence(message.msg_seq)
        if isinstance(message, Heartbeat):
            with self._lock:
                self._counters["heartbeats"] += 1
            return
        if isinstance(message, SeriesStart):
            self._open(message, header_bytes, t_ns)
            return
        series = self._series.get(message.series_id)
        if series is None:
            reason = (f"{message.header['htype']} for series {message.series_id!r}, which is "
                      f"{'already closed' if message.series_id in self._closed_ids else 'unknown (no series_start seen)'}")
            if isinstance(message, OverviewImage) and message.series_id in self._closed_ids:
                self._late_overview(message, header_bytes)
                return
            self._reject(ProtocolError(reason, message.series_id))
            return
        series.last_heard_ns = self._wire_now_ns
        if isinstance(message, Frames):
            self._frames(series, message, header_bytes, t_ns)
        elif isinstance(message, OverviewImage):
            series.overview_received = True
            if series.writer:
                series.writer.add_message(header_bytes, t_ns)
                series.writer.write_overview(message, header_bytes)
            self._notify("overview", message.series_id, message)
        elif isinstance(message, SeriesEnd):
            series.end = message
            series.ended_at_ns = self._wire_now_ns
            series.accounting.dropped_at_source = message.frames_dropped_at_source
            if series.writer:
                series.writer.add_message(header_bytes, t_ns)

    def _check_sequence(self, seq: int) -> None:
        if self._last_seq is not None and seq != self._last_seq + 1:
            if seq > self._last_seq + 1:
                with self._lock:
                    self._counters["msg_seq_gaps"] += 1
                log.warning("msg_seq jumped from %d to %d: %d message(s) lost or reordered in transit",
                            self._last_seq, seq, seq - self._last_seq - 1)
            elif seq == 0:
                log.info("msg_seq restarted at 0: detector restarted or reconnected")
        self._last_seq = seq if self._last_seq is None or seq > self._last_seq or seq == 0 else self._last_seq

    def _open(self, start: SeriesStart, header_bytes: bytes, t_ns: int) -> None:
        problem = None
        if start.series_id in self._series or start.series_id in self._closed_ids:
            problem = f"series_start for series {start.series_id!r}, which already exists"
        elif len(self._series) >= self.settings.max_open_series:
            problem = (f"series_start for {start.series_id!r} while {len(self._series)} series are open "
                       f"(max_open_series={self.settings.max_open_series})")
        else:
            try:
                series = _Series(start, header_bytes, t_ns, self._wire_now_ns, self.settings,
                                 self._capture_path(start.series_id))
            except (OSError, MemoryError, ValueError) as error:
                problem = f"cannot open a capture for series {start.series_id!r}: {error}"
        if problem is not None:
            self._reject(ProtocolError(problem, start.series_id))
            return
        with self._lock:
            self._series[start.series_id] = series
        self._notify("series_started", start)
        log.info("series %s started: %s frames expected, scan %s × %d frames/position",
                 start.series_id, start.frames_expected, start.nav_shape, start.frames_per_position)

    def _capture_path(self, series_id: str) -> Path | None:
        """A file name of its own: never overwrite an earlier capture, even of the same id."""
        if not self.settings.capture:
            return None
        base = _safe_name(series_id)
        path = self.settings.capture_dir / f"{base}.h5"
        counter = 1
        while path.exists():
            counter += 1
            path = self.settings.capture_dir / f"{base}-{counter}.h5"
        return path

    def _frames(self, series: _Series, message: Frames, header_bytes: bytes, t_ns: int) -> None:
        start = series.start
        ids = message.frame_ids
        reason = None
        if tuple(message.header["shape"]) != start.sig_shape:
            reason = f"frame shape {message.header['shape']} differs from the series' {list(start.sig_shape)}"
        elif message.pixels.dtype != start.dtype:
            reason = f"frame dtype {message.pixels.dtype.str} differs from the series' {start.dtype.str}"
        elif int(ids.max()) >= start.frames_expected:
            reason = f"frame id {int(ids.max())} beyond the {start.frames_expected} frames expected"
        elif len(np.unique(ids)) != len(ids):
            reason = "frame ids repeat within one message"
        else:
            ny, nx = start.nav_shape
            y, x = message.scan_yx[:, 0], message.scan_yx[:, 1]
            if (y < 0).any() or (y >= ny).any() or (x < 0).any() or (x >= nx).any():
                reason = f"scan position outside the {ny}×{nx} scan"
        if reason is not None:
            self._reject(ProtocolError(reason, message.series_id, ids), series)
            return
        index = ids.astype(np.int64)
        fresh = series.status[index] != RECEIVED
        duplicates = int((~fresh).sum())
        if duplicates:
            with self._lock:
                self._counters["duplicates"] += duplicates
            series.accounting.duplicates += duplicates
            if not fresh.any():
                return
        # a duplicate message carries nothing new; partially new ones keep only the new frames,
        # each with its place in the message as sent (for a verbatim replay)
        slots_in_message = np.flatnonzero(fresh).astype(np.int32)
        index, pixels = index[fresh], message.pixels[fresh]
        scan_yx, stamps = message.scan_yx[fresh], message.timestamps_ns[fresh]
        if series.writer:
            message_index = series.writer.add_message(header_bytes, t_ns, ids)
            chunks = compress_frames(pixels, self._pool)
            series.writer.write_frames(message_index, index.astype(np.uint64), chunks, scan_yx, stamps,
                                       slots_in_message)
        series.accounting.rejected -= int((series.status[index] == REJECTED).sum())
        series.accounting.received += len(index)
        series.status[index] = RECEIVED
        self._accumulate(series, pixels, scan_yx)
        series.first_frame_ns = series.first_frame_ns or t_ns
        series.last_frame_done_ns = time.time_ns()
        with self._lock:
            self._counters["frames_received"] += len(index)
            self._counters["bytes"] += pixels.nbytes
            self._rate_window.append((time.monotonic(), self._counters["frames_received"]))
            if len(self._rate_window) > 512:
                del self._rate_window[:256]

    def _accumulate(self, series: _Series, pixels: np.ndarray, scan_yx: np.ndarray) -> None:
        nx = series.start.nav_shape[1]
        positions = scan_yx[:, 0].astype(np.int64) * nx + scan_yx[:, 1]
        slots = np.full(len(positions), -1, np.int64)
        done = 0  # frames before this index are already added to the pool
        for i, position in enumerate(positions.tolist()):
            if series.flushed_positions[position]:
                series.late_frames += 1  # its sum was already written as incomplete; the frame itself is captured
                continue
            slot = series.slot_of.get(position)
            if slot is None:
                if not series.free_slots:
                    # add what this message assigned so far before a slot is evicted and reused
                    kernels.accumulate_positions(pixels[done:i], slots[done:i], series.pool, series.pool_counts)
                    done = i
                    self._flush_position(series, next(iter(series.slot_of)), complete=False)
                slot = series.free_slots.pop()
                series.slot_of[position] = slot
            slots[i] = slot
        kernels.accumulate_positions(pixels[done:], slots[done:], series.pool, series.pool_counts)
        per_position = series.start.frames_per_position
        for position in set(positions.tolist()):
            slot = series.slot_of.get(position)
            if slot is not None and series.pool_counts[slot] >= per_position:
                self._flush_position(series, position, complete=True)

    def _flush_position(self, series: _Series, position: int, complete: bool) -> None:
        slot = series.slot_of.pop(position)
        frame_sum = series.pool[slot]
        count = int(series.pool_counts[slot])
        centre = self._beam_centre(series, frame_sum) if count else (np.nan, np.nan)
        valid = complete and bool(np.isfinite(centre).all())
        series.frame_counts[position] = count
        series.centres[position] = centre
        series.valid[position] = valid
        series.accounting.positions_valid += int(valid)
        series.flushed_positions[position] = True
        if series.writer:  # compressed in the pool; written by this thread once done
            series.pending_sums.append((position, self._pool.submit(compress_frame, frame_sum.copy()), count,
                                        centre, valid))
            self._write_done_sums(series, wait=len(series.pending_sums) > 64)
        frame_sum[...] = 0
        series.pool_counts[slot] = 0
        series.free_slots.append(slot)

    def _write_done_sums(self, series: _Series, wait: bool = False) -> None:
        while series.pending_sums and (wait or series.pending_sums[0][1].done()):
            position, future, count, centre, valid = series.pending_sums.pop(0)
            chunk = future.result()
            series.writer.write_position(position, chunk, count, centre, valid)
            self._notify("position", series.start.series_id, position, chunk, count, centre, valid)
            wait = wait and len(series.pending_sums) > 32

    def _notify(self, event: str, *args) -> None:
        if self.listener is None:
            return
        try:
            getattr(self.listener, event)(*args)
        except Exception:  # a listener's bug must not cost received data
            with self._lock:
                self._counters["internal_errors"] += 1
            log.exception("live pipeline hook %s failed", event)

    def _beam_centre(self, series: _Series, frame_sum: np.ndarray) -> tuple[float, float]:
        """Beam centre of a position's sum, hot pixels masked (the raw sum is what is kept).

        Descan drift is slow, so the search starts in a window around the previous position's
        centre (~1/50 of a 256² frame); when the beam is not found well inside it, the whole
        frame is searched."""
        radius = self.settings.beam_radius_px
        if series.last_centre is not None:
            half = int(2 * radius) + 8
            cy, cx = (int(round(v)) for v in series.last_centre)
            y0, x0 = max(0, cy - half), max(0, cx - half)
            window = frame_sum[y0 : cy + half + 1, x0 : cx + half + 1]
            wy, wx = kernels.beam_centre(self._masked(series, window, y0, x0), radius)
            if (np.isfinite(wy) and np.isfinite(wx) and radius <= wy <= window.shape[0] - 1 - radius
                    and radius <= wx <= window.shape[1] - 1 - radius):
                series.last_centre = (wy + y0, wx + x0)
                return series.last_centre
        centre = kernels.beam_centre(self._masked(series, frame_sum, 0, 0), radius)
        if np.isfinite(centre).all():
            series.last_centre = centre
        return centre

    @staticmethod
    def _masked(series: _Series, image: np.ndarray, y0: int, x0: int) -> np.ndarray:
        if series.bad_pixels is None:
            return image
        mask = series.bad_pixels[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]]
        return kernels.apply_pixel_mask(image, mask) if mask.any() else image

    def _reject(self, error: ProtocolError, series: _Series | None = None) -> None:
        if series is None and error.series_id is not None:
            series = self._series.get(error.series_id)
        frames = 0
        if series is not None and error.frame_ids is not None:
            ids = error.frame_ids.astype(np.int64)
            ids = ids[(ids >= 0) & (ids < len(series.status))]
            ids = np.unique(ids[series.status[ids] != RECEIVED])
            series.accounting.rejected += int((series.status[ids] != REJECTED).sum())
            series.status[ids] = REJECTED
            frames = len(ids)
        with self._lock:
            self._counters["rejected_messages"] += 1
            self._counters["frames_rejected"] += frames
        if series is not None:
            series.accounting.rejected_messages += 1
            if series.writer:
                series.writer.add_rejection(error.reason)
        self._rejection_logs += 1
        if self._rejection_logs <= 20 or self._rejection_logs % 100 == 0:
            log.warning("rejected message (%d so far): %s%s", self._rejection_logs, error.reason,
                        f" [{frames} frame(s) of series {error.series_id}]" if frames else "")

    def _late_overview(self, message: OverviewImage, header_bytes: bytes) -> None:
        import h5py

        summary = next((s for s in self.closed if s.series_id == message.series_id), None)
        log.warning("overview for series %s arrived after it closed; added to its capture", message.series_id)
        if summary is None or summary.path is None:
            return
        try:
            with h5py.File(summary.path, "r+") as f:
                name = f"overviews/{message.header['overview_id']}"
                if name not in f:
                    dataset = f.create_dataset(name, data=message.image)
                    dataset.attrs.update(header=header_bytes.decode(), affine_scan_to_overview=message.affine,
                                         pixel_size_A=float(message.header["pixel_size_A"]),
                                         acquired=message.header["acquired"])
        except OSError as error:  # e.g. a reader holds the file: keep the image beside it instead
            side = summary.path.with_name(f"{summary.path.stem}.overview-{message.header['overview_id']}.npy")
            np.save(side, message.image)
            log.error("could not add the late overview to %s (%s); saved it as %s", summary.path, error, side)
            summary.notes.append(f"late overview saved beside the capture as {side.name}")
        summary.overview = True
        summary.notes.append("overview arrived after the series closed")

    def _housekeeping(self) -> None:
        """Flush captures about once a second; close series that ended or fell silent.

        Silence is judged on the wire clock of the item just handled: every message received
        before it has been handled (the queue is FIFO), so `wire_now - last_heard` is how long
        the wire carried nothing for that series, however long processing took."""
        now = time.monotonic()
        wire_now = self._wire_now_ns
        for series_id, series in list(self._series.items()):
            if series.writer and now - series.last_flush > self.settings.flush_interval_s:
                self._write_done_sums(series)
                series.writer.flush(series.accounting, series.status)
                series.last_flush = now
            if series.end is not None:
                if series.overview_received or wire_now - series.ended_at_ns > self.settings.overview_grace_s * 1e9:
                    self._close(series_id, None)
            elif wire_now - series.last_heard_ns > self.settings.series_timeout_s * 1e9:
                self._close(series_id, f"no series_end and no message for {self.settings.series_timeout_s:g} s")

    def _close(self, series_id: str, problem: str | None) -> None:
        with self._lock:
            series = self._series.pop(series_id)
        for position in list(series.slot_of):
            self._flush_position(series, position, complete=False)
        notes = list(series.notes)
        if problem:
            notes.append(problem)
        if not series.overview_received:
            notes.append("no overview image received")
        if series.late_frames:
            notes.append(f"{series.late_frames} frame(s) arrived after their position's sum was written")
        accounting = series.accounting
        if accounting.missing < 0:
            notes.append("detector reports more frames dropped at source than were not received")
        if accounting.missing:
            notes.append(f"{accounting.missing} frame(s) missing")
        end_status = series.end.status if series.end is not None else "incomplete"
        plane = None
        ny, nx = series.start.nav_shape
        if series.valid.sum() >= 3:
            try:
                plane = kernels.fit_descan_plane(series.centres.reshape(ny, nx, 2), series.valid.reshape(ny, nx))
            except ValueError as error:
                notes.append(f"descan plane not fitted: {error}")
        path = None
        if series.writer:
            while series.pending_sums:
                self._write_done_sums(series, wait=True)
            series.writer.close(accounting, series.status, end_status, notes, plane)
            path = series.writer.path
        summary = SeriesSummary(series_id, path, end_status, accounting.as_dict(), notes, series.overview_received,
                                max(0.0, (series.last_frame_done_ns - series.first_frame_ns) / 1e9))
        log.info("series %s closed (%s): %s", series_id, end_status, accounting.as_dict())
        for note in notes:
            log.warning("series %s: %s", series_id, note)
        with self._lock:
            self.closed.append(summary)
            del self.closed[:-1000]  # a looping detector must not grow this forever
            self._closed_ids.add(series_id)
        if self.on_series_closed:
            self.on_series_closed(summary)
