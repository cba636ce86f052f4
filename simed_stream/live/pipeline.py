"""`simed run`: the particle chain beside the microscope, series after series.

Threads, one job each:
- the `Receiver`'s (receive, process, compress): ingest and the lossless capture, untouched; as
  its `ReceiverListener` this pipeline only puts what it hands over — each series start,
  `PositionSum`, overview and closed series — on a bounded queue: a slow phaser back-pressures
  the queue, it never drops received data;
- the event thread (`events.py`): keeps open series' sums, builds each series' chain when its
  overview arrives, offers it positions and schedules batches;
- the phasing thread (`phasing.py`): phase-retrieval engine + network + stack/STAR, batch after batch;
- the caller's thread (`run`): console status and `status.json` (`status.py`), about once a second.

What onlookers may see (the web page, `simed_stream/web/`) the threads publish to `view`
(`view.py`): snapshots read without a lock; nothing here waits for a reader.

Output: `OUT/captures/<series>.h5` (every received byte), `OUT/<series>/` (stack, STAR, picks,
report, result.json; a series without overview gets a result saying "not phased: no overview"),
`OUT/status.json`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import zmq

from simed_stream.chain import SeriesResult
from simed_stream.errors import SimedError
from simed_stream.files import check_writable
from simed_stream.ingest import Receiver, ReceiverListener, SeriesSummary
from simed_stream.live.events import OverviewArrived, SeriesBook
from simed_stream.live.phasing import PhasingThread
from simed_stream.live.settings import LiveSettings
from simed_stream.live.status import LiveCounters, live_status, write_status
from simed_stream.live.view import LiveView, SeriesView
from simed_stream.phasing.inference import Phaser
from simed_stream.protocol import OverviewImage, SeriesStart
from simed_stream.records import PositionSum

log = logging.getLogger("simed_stream.live")
_DRAIN = object()  # the event thread's last event


class LivePipeline(ReceiverListener):
    """Ingest + chain; `run()` blocks until `stop()` (or `settings.max_series` series are done).

    `truth_of(series_id)`, when given, returns a simulated series' ground truth (the demo's), so
    its result is scored against it like a reprocessed simulated capture."""

    def __init__(self, settings: LiveSettings, phaser: Phaser | None = None,
                 on_status: Callable[[dict], None] | None = None,
                 truth_of: Callable[[str], dict | None] | None = None):
        self.settings = settings
        self.out_dir = settings.out
        check_writable(self.out_dir)
        self.phaser = phaser or settings.phaser()
        self.fanout = None
        if settings.phasing_workers > 0:  # after the model loaded: a bad model leaves no workers behind
            from simed_stream.fanout import PhasingFanout

            self.fanout = PhasingFanout(settings.phasing_workers, settings.phasing_jobs_endpoint,
                                        settings.phasing_results_endpoint, security=settings.security)
            self.phaser.fanout = self.fanout
        self.on_status = on_status
        self.counters = LiveCounters()
        self.view = LiveView()
        self._events: queue.Queue = queue.Queue(maxsize=settings.event_queue)
        self._phasing = PhasingThread(self.counters, self._done)
        self._book = SeriesBook(settings, self.phaser, self.counters, self._phasing.tasks, self._done, self.view,
                                truth_of)
        self._event_thread = threading.Thread(target=self._event_loop, name="simed-live-events", daemon=True)
        self._stop = threading.Event()
        self._started = time.time()
        self.receiver = Receiver(settings.receiver_settings(), listener=self)

    @property
    def results(self) -> list[SeriesResult]:
        return self.counters.results

    @property
    def errors(self) -> list[str]:
        return self.counters.errors

    # -- the receiver's listener (its processing thread): hand over, nothing else; a full
    # queue blocks here, which is back-pressure on ingest, never loss
    def series_started(self, start: SeriesStart) -> None:
        self._events.put(start)

    def position_sum(self, record: PositionSum) -> None:
        self._events.put(record)

    def overview(self, message: OverviewImage) -> None:
        self._events.put(OverviewArrived(message, time.monotonic()))

    def series_closed(self, summary: SeriesSummary) -> None:
        self._events.put(summary)

    # -- lifecycle
    def run(self) -> list[SeriesResult]:
        try:
            self.receiver.start()
        except BaseException as error:
            if self.fanout is not None:  # its workers must not outlive a pipeline that never ran
                self.fanout.close()
            if isinstance(error, (zmq.ZMQError, OSError)):
                raise SimedError(f"cannot connect to {self.settings.data_endpoint}: {error}") from None
            raise
        logger = logging.getLogger("simed_stream")
        logger.addHandler(self.view.log_handler)
        self._event_thread.start()
        self._phasing.start()
        try:
            self.write_status()
            while not self._stop.is_set():
                self._stop.wait(self.settings.status_interval_s)
                self.write_status()
                if self.receiver.error is not None:
                    raise SimedError(f"receiver failed: {self.receiver.error}")
                if self.settings.max_series is not None and len(self.results) >= self.settings.max_series:
                    break
        finally:
            self.receiver.stop()  # closes open series: their captures are complete, events queued
            self._events.put(_DRAIN)
            self._event_thread.join()
            if not self._phasing.quit(self.settings.phasing_join_timeout_s):
                log.error("phasing did not finish within %g s of the stop; its captures are complete",
                          self.settings.phasing_join_timeout_s)
            if self.fanout is not None:
                self.fanout.close()
            self.write_status(final=True)
            logger.removeHandler(self.view.log_handler)
        return self.results

    def stop(self) -> None:
        self._stop.set()

    # -- event thread
    def _event_loop(self) -> None:
        while True:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                event = None  # a tick: only scheduling (a batch's latency may have run out)
            try:
                if event is _DRAIN:
                    self._book.drain()
                    return
                if event is not None:
                    self._book.handle(event)
            except Exception as error:  # one series' failure must not stop the others
                log.exception("live pipeline: %s event failed", type(event).__name__)
                self.counters.error(f"{type(event).__name__}: {error}")
                if event is _DRAIN:
                    return
            self._book.schedule()

    def _done(self, result: SeriesResult, view: SeriesView) -> None:
        """A series' last word (event or phasing thread): result.json, written once, the tally, the view."""
        try:  # a full disk must not lose the series' result nor stop the thread that reports it
            result.write()
        except OSError as error:
            log.error("series %s: cannot write its result.json: %s", result.series_id, error)
            self.counters.error(f"{result.series_id}: cannot write result.json: {error}")
            result.status = f"failed: cannot write result.json: {error}"
        self.counters.result(result)
        view.done(result)
        log.info("series %s: %s, %d picks, %d phased", result.series_id, result.status, result.picks, result.phased)

    # -- telemetry
    def status(self) -> dict:
        closed = [summary.accounting for summary in list(self.receiver.closed)]
        extra = {"event_queue": self._events.qsize(), "cached_bytes": self._book.cached_bytes}
        return live_status(self.receiver.status(), closed, self.counters, extra, self._started)

    def write_status(self, final: bool = False) -> dict:
        status = self.status()
        status["state"] = "stopped" if final else "running"
        write_status(self.out_dir / "status.json", status)
        self.view.publish_status(status)
        if self.on_status:
            self.on_status(status)
        return status
