"""The receiver: takes a simed-stream/1 data stream, accounts for every frame, sums and centres
each scan position and writes a lossless capture per series.

Two threads. The *receive* thread (`wire.py`) only receives, decodes and queues. The
*processing* thread (here) owns all series state: it checks each message against its series
(`series.py`), captures and sums its frames (`sums.py`; numba, GIL released; half of the
compression in a third thread), closes series that ended or fell silent on the wire, and hands
each series start, position sum, overview and closed series to a `ReceiverListener`.

Back-pressure, not loss: when processing falls behind (or a listener blocks), the queue fills,
the receive thread blocks, ZeroMQ's receive buffer fills and then the detector's; a real
detector then drops frames at source and says so in `series_end`. Nothing accepted is ever
dropped. Memory is bounded by (queue_messages + rcvhwm) × max_message_bytes plus
max_pending_positions partial sums per open series.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from simed_stream import kernels
from simed_stream.capture import add_late_overview
from simed_stream.files import unique_path
from simed_stream.ingest.overviews import OverviewDesk, OverviewInputs
from simed_stream.ingest.series import OpenSeries, SeriesSummary
from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.ingest.stages import StageClock
from simed_stream.ingest.telemetry import IngestTelemetry
from simed_stream.ingest.wire import Received, Wire
from simed_stream.protocol import Frames, Heartbeat, OverviewImage, ProtocolError, SeriesEnd, SeriesStart
from simed_stream.records import PositionSum

log = logging.getLogger("simed_stream.ingest")
_CLOSED_KEPT = 1000  # summaries kept: a looping detector must not grow the list forever


class ReceiverListener:
    """What the receiver hands over, from its processing thread. Each call must only hand data
    over: a slow listener back-pressures ingest, and an exception is counted, never fatal."""

    def series_started(self, start: SeriesStart) -> None:
        pass

    def position_sum(self, record: PositionSum) -> None:
        pass

    def overview(self, message: OverviewImage) -> None:
        pass

    def series_closed(self, summary: SeriesSummary) -> None:
        pass


class Receiver:
    """Receive, validate, account, process and capture; use as a context manager."""

    def __init__(self, settings: ReceiverSettings, listener: ReceiverListener | None = None):
        self.settings = settings
        self.listener = listener or ReceiverListener()
        settings.capture_dir.mkdir(parents=True, exist_ok=True)
        self.telemetry = IngestTelemetry()
        self.stages = StageClock()
        self.wire = Wire(settings, self.stages)
        self.overview_desk = OverviewDesk(settings, settings.max_message_bytes)
        self.overview_inputs = OverviewInputs(settings, settings.max_message_bytes, self.wire.put_input)
        self._series: dict[str, OpenSeries] = {}
        self.closed: list[SeriesSummary] = []
        self._closed_ids: set[str] = set()
        self._lock = threading.Lock()  # guards _series, closed: status() reads them from other threads
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # the processing thread compresses half of each message, this pool's thread the other
        self._compressor = ThreadPoolExecutor(1, thread_name_prefix="simed-compress")

    # -- lifecycle
    def __enter__(self) -> "Receiver":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        kernels.warm_up()  # before the first series can arrive, not while its frames queue
        thread = threading.Thread(target=self._process_loop, name="simed-process", daemon=True)
        self.wire.start(consumer_alive=thread.is_alive)  # raises zmq.ZMQError or OSError for a bad endpoint
        self._thread = thread
        thread.start()
        self.overview_inputs.start()

    def stop(self) -> list[SeriesSummary]:
        """Stop receiving, process what is queued, close every open series."""
        self.overview_inputs.stop()
        self.wire.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.wire.close()
        self._compressor.shutdown()
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
            open_series = {sid: s.accounting.as_dict() for sid, s in self._series.items()}
            closed = [s.series_id for s in self.closed]
        telemetry = self.telemetry.snapshot()
        return dict(telemetry, queue_depth=self.wire.queue.qsize(), queue_capacity=self.settings.queue_messages,
                    open_series=open_series, closed_series=closed,
                    cpu_us_per_frame=self.stages.us_per_frame(telemetry["frames_received"]))

    # -- processing thread
    def _process_loop(self) -> None:
        try:
            while True:
                item = self.wire.queue.get()
                self.telemetry.lag_s = max(0.0, (time.time_ns() - item.received_ns) / 1e9)
                if item.kind == "stop":  # the receive thread's last item: all is handled
                    break
                try:
                    if item.kind == "message":
                        self._on_message(item)
                    elif item.kind == "rejected":
                        self._reject(item.error)
                    elif item.kind == "overview":
                        self._take(item, self.overview_desk.place(item.message, self._series, self.closed))
                    self._housekeeping(item.wire_ns)
                except Exception as error:  # a bug or a disk error on one message: log, count, go on
                    log.exception("error while handling a %s item", item.kind)
                    self.telemetry.internal_error(error)
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

    def _on_message(self, item: Received) -> None:
        message = item.message
        self.telemetry.count(messages=1)
        self.telemetry.check_sequence(message.msg_seq)
        if isinstance(message, Heartbeat):
            self.telemetry.count(heartbeats=1)
            return
        self._dispatch(item)

    def _dispatch(self, item: Received) -> None:
        message = item.message
        if isinstance(message, SeriesStart):
            self._open(message, item)
            return
        series = self._series.get(message.series_id)
        if series is None:
            self._not_open(message, item)
            return
        series.last_heard_wire_ns = item.wire_ns
        if isinstance(message, Frames):
            self._on_frames(series, message, item)
        elif isinstance(message, OverviewImage):
            series.add_overview(message, item.header_bytes, item.received_ns)
            self._hand_over(self.listener.overview, message)
        elif isinstance(message, SeriesEnd):
            series.add_end(message, item.header_bytes, item.received_ns, item.wire_ns)

    def _open(self, start: SeriesStart, item: Received) -> None:
        problem = None
        if start.series_id in self._series or start.series_id in self._closed_ids:
            problem = f"series_start for series {start.series_id!r}, which already exists"
        elif len(self._series) >= self.settings.max_open_series:
            problem = (f"series_start for {start.series_id!r} while {len(self._series)} series are open "
                       f"(max_open_series={self.settings.max_open_series})")
        else:
            try:  # a file name of its own: never overwrite an earlier capture, even of the same id
                path = unique_path(self.settings.capture_dir, start.series_id, ".h5")
                series = OpenSeries(start, item.header_bytes, item.received_ns, item.wire_ns, self.settings, path,
                                    self._compressor, self._position_sum, self.stages)
            except (OSError, MemoryError, ValueError) as error:
                problem = f"cannot open a capture for series {start.series_id!r}: {error}"
        if problem is not None:
            self._reject(ProtocolError(problem, start.series_id))
            return
        with self._lock:
            self._series[start.series_id] = series
        self._hand_over(self.listener.series_started, start)
        self._take(item, self.overview_desk.on_series_start(start.series_id))
        log.info("series %s started: %s frames expected, scan %s × %d frames/position",
                 start.series_id, start.frames_expected, start.nav_shape, start.frames_per_position)

    def _not_open(self, message, item: Received) -> None:
        closed = message.series_id in self._closed_ids
        if isinstance(message, OverviewImage) and closed:
            self._late_overview(message, item.header_bytes)
            return
        state = "already closed" if closed else "unknown (no series_start seen)"
        self._reject(ProtocolError(f"{message.header['htype']} for series {message.series_id!r}, which is {state}",
                                   message.series_id))

    def _on_frames(self, series: OpenSeries, message: Frames, item: Received) -> None:
        with self.stages("validate"):
            problem = series.problem_with(message)
        if problem is not None:
            self._reject(ProtocolError(problem, message.series_id, message.frame_ids))
            return
        frames, nbytes, duplicates = series.add_frames(message, item.header_bytes, item.received_ns)
        if duplicates:
            self.telemetry.count(duplicates=duplicates)
        if frames:
            self.telemetry.frames_received(frames, nbytes)

    def _take(self, item: Received, placed) -> None:
        """A loose overview, placed on its series (`overviews.py`), into the path of any message."""
        if placed is not None and placed.error is not None:
            self._reject(placed.error)
        elif placed is not None:
            self._dispatch(Received("message", item.received_ns, item.wire_ns, placed.message, placed.header_bytes))

    def _position_sum(self, record: PositionSum) -> None:
        self._hand_over(self.listener.position_sum, record)

    def _hand_over(self, hook, payload) -> None:
        try:
            hook(payload)
        except Exception as error:  # a listener's bug must not cost received data
            log.exception("receiver listener %s failed", hook.__name__)
            self.telemetry.internal_error(error)

    def _reject(self, error: ProtocolError) -> None:
        series = self._series.get(error.series_id) if error.series_id is not None else None
        frames = series.reject(error.frame_ids, error.reason) if series is not None else 0
        self.telemetry.rejected(error, frames)

    def _late_overview(self, message: OverviewImage, header_bytes: bytes) -> None:
        log.warning("overview for series %s arrived after it closed; added to its capture", message.series_id)
        summary = next((s for s in self.closed if s.series_id == message.series_id), None)
        if summary is not None:  # else closed so long ago that its summary is no longer kept
            summary.notes.extend(add_late_overview(summary.path, message, header_bytes))
            summary.overview = True

    def _housekeeping(self, wire_now_ns: int) -> None:
        """Flush captures about once a second; close series that ended or fell silent.

        Silence is judged on the wire clock of the item just handled: everything received before
        it has been handled (the queue is FIFO), so `wire_now - last_heard` is how long the wire
        carried nothing for that series, however long processing took."""
        settings = self.settings
        for series_id, series in list(self._series.items()):
            series.flush_if_due(settings.flush_interval_s)
            self._watch_capture(series)
            if series.end is not None:
                if series.overview_received or wire_now_ns - series.ended_wire_ns > settings.overview_grace_s * 1e9:
                    self._close(series_id, None)
            elif wire_now_ns - series.last_heard_wire_ns > settings.series_timeout_s * 1e9:
                self._close(series_id, f"no series_end and no message for {settings.series_timeout_s:g} s")

    def _watch_capture(self, series: OpenSeries) -> None:
        """Tell the operator, once, that a series' capture stopped (a full disk): log and status."""
        if series.capture_failure and not series.capture_failure_told:
            series.capture_failure_told = True
            self.telemetry.capture_failed(series.start.series_id, series.capture_failure)

    def _close(self, series_id: str, problem: str | None) -> None:
        with self._lock:
            series = self._series.pop(series_id)
        summary = series.close(problem)
        self._watch_capture(series)
        log.info("series %s closed (%s): %s", series_id, summary.end_status, summary.accounting)
        for note in summary.notes:
            log.warning("series %s: %s", series_id, note)
        with self._lock:
            self.closed.append(summary)
            del self.closed[:-_CLOSED_KEPT]
            self._closed_ids.add(series_id)
        self._hand_over(self.listener.series_closed, summary)
