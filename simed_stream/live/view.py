"""What the live pipeline shows to onlookers (the web page and its API, `simed_stream/web/`):
snapshots its threads publish, which any thread reads without taking a lock.

Each published value is immutable (a tuple, a frozen record, an array no one writes again, or a
dict nobody changes after publication) and is replaced whole by the thread that makes it; a
reader takes the reference. Writers that share a series serialise among themselves on that
series' own lock, which no reader and no ingest thread ever takes. The one value written in
place is a series' coverage map (a bytearray the event thread sets byte by byte): readers copy
it in one call (`bytes(...)`). `version` numbers change whenever something was published, so
a reader knows when to look again. Everything is bounded: the newest `GALLERY` phased
particles, the last `SERIES_KEPT` series (overviews of the last `OVERVIEWS_KEPT`), and fixed
timelines of the ingest rate, of every particle's resolution, and of warnings and errors.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simed_stream.live.timeline import Timeline
from simed_stream.protocol import SeriesStart

GALLERY, SERIES_KEPT, OVERVIEWS_KEPT = 24, 50, 8
RATE_POINTS, RESOLUTION_POINTS, MESSAGES_KEPT, MESSAGE_CHARS = 3600, 20_000, 200, 1000
PENDING, VALID, INCOMPLETE = 0, 1, 2  # a scan position in the coverage map (INCOMPLETE: some or all
# of its frames never came)
_clock = itertools.count(1)  # `next` is atomic: every publication gets a number of its own


@dataclass(frozen=True)
class ParticleView:
    """A phased particle, as the gallery shows it; `key` numbers the run's phased particles."""

    key: int
    series_key: int
    series_id: str
    index: int  # the pick's index in its series
    scan_yx: tuple[int, int]
    coverage: float
    fourier_r: float
    r_free: float
    resolution_A: float
    uncertainty: float
    t_s: float  # since the pipeline started
    image: np.ndarray  # σV as written to the stack
    image_lr: np.ndarray  # the overview's field around the pick


@dataclass(frozen=True)
class PickView:
    index: int
    yx_px: tuple[float, float]  # in the overview
    state: str  # "pending", "phased" or "flagged"
    reason: str | None  # why flagged
    key: int | None  # the ParticleView's, once phased


class SeriesView:
    """One series as onlookers see it, from its series_start to its result."""

    def __init__(self, live: "LiveView", key: int, start: SeriesStart):
        self.live, self.key, self.series_id = live, key, start.series_id
        self.nav_shape = tuple(int(n) for n in start.nav_shape)
        self.frames_expected = start.frames_expected
        self.started_unix_s = time.time()
        self.coverage = bytearray(self.nav_shape[0] * self.nav_shape[1])  # PENDING / VALID / INCOMPLETE
        self.positions_valid = self.positions_incomplete = 0
        self.state = "open"  # open → closed (its last particles being phased) → done
        self.folder: Path | None = None
        self.overview: np.ndarray | None = None
        self.overview_pixel_A = self.pick_diameter_px = 0.0
        self.picks: tuple[PickView, ...] = ()
        self.resolutions: tuple[float, ...] = ()  # of its phased particles
        self.result: dict | None = None  # result.json's content, once done
        self.version = next(_clock)
        self._lock = threading.Lock()  # among writers (event and phasing threads) only
        self._chain = None  # until done: its particles' states are read from it
        self._keys: dict[int, int] = {}  # pick index → ParticleView key

    # -- event thread
    def position(self, position: int, valid: bool) -> None:
        if 0 <= position < len(self.coverage) and self.coverage[position] == PENDING:
            self.coverage[position] = VALID if valid else INCOMPLETE
            if valid:
                self.positions_valid += 1
            else:
                self.positions_incomplete += 1
            self._changed()

    def overview_in(self, chain) -> None:
        """The series' chain exists: its overview, its folder and its picks."""
        with self._lock:
            self._chain = chain
            self.folder = chain.result.out_dir
            self.overview_pixel_A = chain.calibration.overview_pixel_A
            self.pick_diameter_px = chain.settings.picking.diameter_A / self.overview_pixel_A
            self.overview = chain.overview
            self._publish_picks()

    def closed(self) -> None:
        """The receiver closed the series: positions never received are incomplete for good."""
        never = self.coverage.count(PENDING)
        self.coverage[:] = self.coverage.replace(bytes([PENDING]), bytes([INCOMPLETE]))
        self.positions_incomplete += never
        self.state = "closed"
        self._changed()

    # -- phasing thread
    def phased(self, phased: list) -> None:
        """Particles (`PhasedParticle`) the last batch put into the stack."""
        with self._lock:
            views = self.live.add_particles(self, phased)
            self._keys.update((view.index, view.key) for view in views)
            self.resolutions = self.resolutions + tuple(view.resolution_A for view in views)
            self._publish_picks()

    # -- event or phasing thread
    def done(self, result) -> None:
        """The series' `SeriesResult`, as written to result.json."""
        with self._lock:
            self.folder = result.out_dir
            self._publish_picks()
            self._chain = None
            self.result = result.as_dict()
            self.state = "done"
            self._changed()

    def _publish_picks(self) -> None:
        chain = self._chain
        if chain is not None:
            self.picks = tuple(PickView(p.index, (float(p.yx_overview_px[0]), float(p.yx_overview_px[1])),
                                        "phased" if p.index in self._keys else "flagged" if p.flag else "pending",
                                        p.flag, self._keys.get(p.index)) for p in chain.particles)
        self._changed()

    def _changed(self) -> None:
        self.version = next(_clock)
        self.live.series_version = self.version


class LiveView:
    """Everything the pipeline publishes for onlookers; `LivePipeline.view`."""

    def __init__(self):
        self.started_unix_s = time.time()
        self.status: dict | None = None  # status.json's content, as last written
        self.status_version = 0
        self.rate = Timeline(RATE_POINTS)  # (seq, t_s, frames_per_s, queue_depth, lag_s)
        self.resolution = Timeline(RESOLUTION_POINTS)  # (key, t_s, series_key, resolution_A, fourier_r)
        self.messages = Timeline(MESSAGES_KEPT)  # (seq, unix_s, level, logger, text)
        self.series: tuple[SeriesView, ...] = ()  # newest last
        self.series_version = 0
        self.gallery: tuple[ParticleView, ...] = ()  # newest last
        self.gallery_version = 0
        self.log_handler = MessageHandler(self.messages)
        self._keys, self._series_keys = itertools.count(1), itertools.count(1)

    def open_series(self, start: SeriesStart) -> SeriesView:
        """Event thread: a series started."""
        view = SeriesView(self, next(self._series_keys), start)
        kept = self.series[-(SERIES_KEPT - 1):] + (view,)
        for old in kept[:-OVERVIEWS_KEPT]:
            old.overview = None
        self.series = kept
        self.series_version = view.version
        return view

    def publish_status(self, status: dict) -> None:
        """Status thread: `status` was just written to status.json; it is never changed again."""
        ingest = status["ingest"]
        self.status = status
        self.rate.append(round(time.time() - self.started_unix_s, 3), ingest["frames_per_s"], ingest["queue_depth"],
                         ingest["lag_s"])
        self.status_version = next(_clock)

    def add_particles(self, series: SeriesView, phased: list) -> list[ParticleView]:
        """Phasing thread: the gallery keeps the newest; the resolution timeline keeps them all."""
        t_s = round(time.time() - self.started_unix_s, 3)
        views = [ParticleView(next(self._keys), series.key, series.series_id, p.particle.index,
                              tuple(int(v) for v in p.particle.scan_yx), float(p.particle.coverage), p.fourier_r,
                              p.r_free, p.resolution_A, p.uncertainty, t_s, p.image, p.particle.image_lr)
                 for p in phased]
        if views:
            self.resolution.extend((t_s, series.key, v.resolution_A, v.fourier_r) for v in views)
            self.gallery = (self.gallery + tuple(views))[-GALLERY:]
            self.gallery_version = next(_clock)
        return views

    def find_series(self, key: int) -> SeriesView | None:
        for view in self.series:
            if view.key == key:
                return view
        return None


class MessageHandler(logging.Handler):
    """Warnings and errors logged under `simed_stream`, into the view's message timeline (the
    logging module's own handler lock serialises the threads that log)."""

    def __init__(self, timeline: Timeline):
        super().__init__(logging.WARNING)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.timeline.append(round(record.created, 3), record.levelname, record.name, text[:MESSAGE_CHARS])
        except Exception:  # noqa: BLE001  (logging's rule: a handler never raises)
            self.handleError(record)
