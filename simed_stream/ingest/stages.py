"""CPU time per ingest stage, summed over the threads that run it.

Each stage is timed on the thread CPU clock of whichever thread runs it (`time.thread_time_ns`),
so waiting and other processes never count, and a stage split over two threads (compression)
adds up both halves. Timing costs about a microsecond per call and is done per message or per
scan position, never per pixel. `Receiver.status()` reports it as microseconds per received
frame; `tools/bench_ingest.py --profile` prints it beside the whole process's CPU time (what no
stage names — ZeroMQ's I/O thread, the kernel's copies, Python between the stages — is the
difference).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

#: the stages of a frame's path through the receiver, in order: receive (and decode, in the
#: source's adapter), validate (against the series), copy, compress, write (HDF5), sums, centre,
#: sum_compress
STAGES = ("receive", "validate", "copy", "compress", "write", "sums", "centre", "sum_compress")


class StageClock:
    def __init__(self):
        self._lock = threading.Lock()
        self._ns = dict.fromkeys(STAGES, 0)

    def add(self, stage: str, ns: int) -> None:
        with self._lock:
            self._ns[stage] += ns

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.thread_time_ns()
        try:
            yield
        finally:
            self.add(stage, time.thread_time_ns() - started)

    def timed(self, stage: str, function: Callable[..., T]) -> Callable[..., T]:
        """`function`, timed as `stage` on whichever thread calls it (e.g. an executor's)."""

        def run(*args, **kwargs) -> T:
            with self(stage):
                return function(*args, **kwargs)

        return run

    def us_per_frame(self, frames: int) -> dict[str, float]:
        with self._lock:
            spent = dict(self._ns)
        return {stage: round(ns / 1e3 / frames, 2) if frames else 0.0 for stage, ns in spent.items()}
