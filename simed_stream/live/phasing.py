"""The live pipeline's phasing thread: batches and finished series, in the order they were
scheduled, through their `SeriesChain` (engine + network, stack and STAR, report).

Its task queue is bounded: a phaser that falls behind blocks the event thread, whose full queue
then back-pressures the receiver — memory stays bounded and nothing received is dropped."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from simed_stream.chain import SeriesChain, SeriesResult
from simed_stream.live.status import LiveCounters
from simed_stream.live.view import SeriesView
from simed_stream.records import Particle

log = logging.getLogger("simed_stream.live")
TASK_QUEUE = 64


@dataclass(frozen=True)
class PhaseBatch:
    chain: SeriesChain
    particles: list[Particle]
    overview_arrived_s: float  # monotonic: the latency is measured from here
    view: SeriesView  # where its phased particles are published


@dataclass(frozen=True)
class FinishSeries:
    chain: SeriesChain
    notes: list[str]
    accounting: dict | None
    view: SeriesView


class PhasingThread:
    def __init__(self, counters: LiveCounters, done: Callable[[SeriesResult, SeriesView], None]):
        self.counters, self.done = counters, done
        self.tasks: queue.Queue[PhaseBatch | FinishSeries | None] = queue.Queue(maxsize=TASK_QUEUE)
        self._latency_s: dict[int, float] = {}  # per chain: overview arrival → last particle in the stack
        self._thread = threading.Thread(target=self._loop, name="simed-live-phasing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def quit(self, timeout_s: float) -> bool:
        """After the tasks queued so far; False if they did not finish within `timeout_s`."""
        self.tasks.put(None)
        self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                if isinstance(task, PhaseBatch):
                    self._phase(task)
                else:
                    self._finish(task)
            except Exception as error:
                self._failed(task, error)

    def _phase(self, task: PhaseBatch) -> None:
        phased = task.chain.phase(task.particles)
        self.counters.add(particles_phased=len(phased))  # the phaser may flag some: they are not among them
        self._latency_s[id(task.chain)] = time.monotonic() - task.overview_arrived_s
        task.view.phased(phased)

    def _finish(self, task: FinishSeries) -> None:
        result = task.chain.finish(task.notes, task.accounting)
        self.counters.add(particles_flagged=sum(result.flagged.values()))
        self._done(task, result)

    def _done(self, task: FinishSeries, result: SeriesResult) -> None:
        latency = self._latency_s.pop(id(task.chain), None)
        if latency is not None:
            result.seconds["overview_to_last_particle"] = latency
        self.done(result, task.view)

    def _failed(self, task: PhaseBatch | FinishSeries, error: Exception) -> None:
        series_id = task.chain.result.series_id
        log.exception("live pipeline: phasing series %s failed", series_id)
        self.counters.error(f"{series_id}: {error}")
        result = task.chain.result
        if isinstance(task, PhaseBatch):  # these particles are in no stack: flag them, and fail the series
            for particle in task.particles:
                particle.flag = particle.flag or f"phasing or writing failed: {error}"
            if result.status == "phased":
                result.status = f"failed: {error}"
        else:
            result.status = f"failed: {error}"  # keep its flags, notes and accounting
            self._done(task, result)
