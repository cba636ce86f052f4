"""The live pipeline's event thread: what it knows about each open series, and what it does with
each hand-over from the receiver.

It keeps each open series' position sums (compressed, as captured; bounded in bytes) until the
overview arrives, then builds the series' `SeriesChain` (picks and scan matching at once),
offers it every position it needs — those already here and those still to come — and schedules
ready particles in batches: a batch goes when it is full or its oldest particle has waited
`batch_latency_s`. When the series closes its last batch and its finish are queued."""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from simed_stream.chain import NO_OVERVIEW, SeriesChain, SeriesResult
from simed_stream.files import unique_path
from simed_stream.ingest import SeriesSummary
from simed_stream.live.phasing import FinishSeries, PhaseBatch
from simed_stream.live.settings import LiveSettings
from simed_stream.live.status import LiveCounters
from simed_stream.live.view import LiveView, SeriesView
from simed_stream.particles import ScanCalibration
from simed_stream.phasing.inference import Phaser
from simed_stream.protocol import OverviewImage, SeriesStart
from simed_stream.records import Particle, PositionSum

log = logging.getLogger("simed_stream.live")
BEYOND_CACHE = "position sums beyond the live cache"


@dataclass(frozen=True)
class OverviewArrived:
    message: OverviewImage
    arrived_s: float  # monotonic


class _OpenSeries:
    def __init__(self, start: SeriesStart, view: SeriesView):
        self.start, self.view = start, view
        self.sums: dict[int, PositionSum] = {}  # kept until the overview comes
        self.chain: SeriesChain | None = None
        self.overview_arrived_s = 0.0
        self.ready: list[Particle] = []
        self.ready_since = 0.0
        self.failed: str | None = None
        self.beyond_cache: set[int] = set()  # received and captured, but not kept for phasing


class SeriesBook:
    """Lives in the event thread only; results of series that never got a chain go to `done`.
    It publishes what it learns of each series to `view` (coverage, overview, picks)."""

    def __init__(self, settings: LiveSettings, phaser: Phaser, counters: LiveCounters,
                 tasks: queue.Queue, done: Callable[[SeriesResult, SeriesView], None], view: LiveView,
                 truth_of: Callable[[str], dict | None] | None = None):
        self.settings, self.phaser, self.counters, self.tasks, self.done = settings, phaser, counters, tasks, done
        self.view = view
        self.truth_of = truth_of or (lambda _series_id: None)
        self.open: dict[str, _OpenSeries] = {}
        self.cached_bytes = 0

    def handle(self, event) -> None:
        if isinstance(event, PositionSum):
            self._position(event)
        elif isinstance(event, SeriesStart):
            self.open[event.series_id] = _OpenSeries(event, self.view.open_series(event))
            self.counters.set(series_open=len(self.open))
        elif isinstance(event, OverviewArrived):
            self._overview(event)
        elif isinstance(event, SeriesSummary):
            self._closed(event)
        else:
            raise TypeError(f"unexpected live event {event!r}")

    def drain(self) -> None:
        """At stop: the receiver closed every series already, so this only finishes leftovers."""
        for series_id in list(self.open):
            self.finish(series_id, ["stopped before the series closed"])

    def _position(self, record: PositionSum) -> None:
        series = self.open.get(record.series_id)
        if series is None:
            return
        series.view.position(record.position, record.valid)
        if series.chain is not None:  # overview already in: use it now, keep nothing
            if record.position in series.chain.waiting:
                self._offer(series, record)
            return
        if self.cached_bytes + len(record.chunk) > self.settings.max_cached_bytes:
            series.failed = series.failed or (f"{BEYOND_CACHE} ({self.settings.max_cached_bytes} bytes): "
                                              "reprocess the capture")
            series.beyond_cache.add(record.position)
            return
        series.sums[record.position] = record
        self.cached_bytes += len(record.chunk)

    def _overview(self, event: OverviewArrived) -> None:
        message = event.message
        series = self.open.get(message.series_id)
        if series is None or series.chain is not None:  # the first overview to arrive is used
            return
        start = series.start
        try:
            calibration = ScanCalibration.from_headers(start.header, message.header)
            bad = start.pixel_mask.astype(bool) if start.pixel_mask is not None else None
            series.chain = SeriesChain(self.phaser, self.settings, start.series_id, self._series_dir(start.series_id),
                                       message.image.astype(np.float64), calibration, bad,
                                       self.truth_of(start.series_id))
        except Exception as error:  # unusable overview or calibration: say which, keep ingesting
            series.failed = f"not phased: {error}"
            log.error("series %s: %s", start.series_id, error)
            return
        series.overview_arrived_s = event.arrived_s
        series.view.overview_in(series.chain)
        self.counters.add(particles_found=series.chain.result.picks)
        for position in series.chain.positions_needed():
            cached = series.sums.get(position)
            if cached is not None:
                self._offer(series, cached)
        self._release(series)

    def _series_dir(self, series_id: str):
        return unique_path(self.settings.out, series_id)

    def _offer(self, series: _OpenSeries, record: PositionSum) -> None:
        ready = series.chain.offer(record)
        if ready and not series.ready:
            series.ready_since = time.monotonic()
        series.ready.extend(ready)

    def _closed(self, summary: SeriesSummary) -> None:
        series = self.open.get(summary.series_id)
        if series is None:
            return
        if series.chain is not None:
            for position in series.chain.positions_needed():  # flushed incomplete or never seen
                if position in series.beyond_cache:
                    for particle in series.chain.waiting.pop(position):
                        particle.flag = "its position's sum was beyond the live cache: reprocess the capture"
                    continue
                cached = series.sums.get(position)
                if cached is not None:
                    self._offer(series, cached)
        self.finish(summary.series_id, list(summary.notes), summary.accounting)

    def finish(self, series_id: str, notes: list[str], accounting: dict | None = None) -> None:
        series = self.open.pop(series_id)
        self._release(series)
        series.view.closed()
        if series.chain is not None:
            if series.ready:
                self.tasks.put(PhaseBatch(series.chain, series.ready, series.overview_arrived_s, series.view))
            if series.failed:  # e.g. position sums dropped from the live cache: say why particles lack data
                notes = notes + [series.failed]
            self.tasks.put(FinishSeries(series.chain, notes, accounting, series.view))
        else:
            cache_only = series.failed is not None and series.failed.startswith(BEYOND_CACHE)
            status = NO_OVERVIEW if series.failed is None or cache_only else series.failed
            advice = ("captured frames kept in captures/; `simed reprocess` it once an overview is added"
                      if status == NO_OVERVIEW else "captured frames kept in captures/")
            self.done(SeriesResult(series_id, self._series_dir(series_id), status, accounting=accounting,
                                   notes=notes + ([series.failed] if cache_only else []) + [advice]), series.view)
        self.counters.set(series_open=len(self.open))

    def _release(self, series: _OpenSeries) -> None:
        self.cached_bytes -= sum(len(record.chunk) for record in series.sums.values())
        series.sums.clear()

    def schedule(self) -> None:
        """Queue full batches, and any batch whose oldest particle waited `batch_latency_s`."""
        now = time.monotonic()
        size, latency = self.settings.batch_size, self.settings.batch_latency_s
        for series in self.open.values():
            while len(series.ready) >= size:
                self.tasks.put(PhaseBatch(series.chain, series.ready[:size], series.overview_arrived_s, series.view))
                series.ready = series.ready[size:]
                series.ready_since = now
            if series.ready and now - series.ready_since >= latency:
                self.tasks.put(PhaseBatch(series.chain, series.ready, series.overview_arrived_s, series.view))
                series.ready = []
        self.counters.set(phasing_queue=self.tasks.qsize())
