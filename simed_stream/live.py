"""`simed run`: the particle chain beside the microscope, series after series.

Threads, one job each:
- the `Receiver`'s (receive, process, compress): ingest and the lossless capture, untouched;
  it hands every written position sum (compressed, as captured), every overview and every
  closed series to this pipeline through a bounded queue — a slow phaser back-pressures the
  queue, it never drops received data;
- the event thread: keeps each open series' position sums (compressed, bounded in bytes),
  builds the series' `SeriesChain` when its overview arrives, offers it positions as they come
  and schedules batches: a batch goes when it is full or its oldest particle has waited
  `batch_latency_s`;
- the phasing thread: classical phasing + network + stack/STAR, batch after batch;
- the caller's thread: console status and `status.json`, about once a second.

Output: `OUT/captures/<series>.h5` (every received byte), `OUT/<series>/` (stack, STAR, picks,
report, result.json; a series without overview gets a result saying "not phased: no overview"),
`OUT/status.json`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simed_stream.errors import SimedError
from simed_stream.pipeline import NO_OVERVIEW, ChainSettings, SeriesChain, SeriesResult, write_result, check_writable
from simed_stream.particles import ScanCalibration
from simed_stream.phasing.inference import ParticlePhaser
from simed_stream.protocol import DEFAULT_DATA_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


@dataclass
class LiveSettings:
    out_dir: Path
    model: Path
    data_endpoint: str = DEFAULT_DATA_ENDPOINT
    device: str = "auto"
    chain: ChainSettings = field(default_factory=ChainSettings)
    batch_latency_s: float = 1.0  # a particle waits at most this long for its batch to fill
    overview_timeout_s: float = 10.0  # after series_end: then "not phased: no overview"
    series_timeout_s: float = 10.0  # no series_end and no message for this long: closed as incomplete
    max_cached_bytes: int = 2 * 1024**3  # compressed position sums kept per run, for late overviews
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    event_queue: int = 4096
    phasing_workers: int = 0  # >0: classical phasing in that many worker processes over ZeroMQ (fanout.py)
    status_interval_s: float = 1.0
    phasing_join_timeout_s: float = 600.0  # at stop: how long queued batches may still take


def _decompress(chunk: bytes, dtype: np.dtype, shape) -> np.ndarray:
    from numcodecs import Blosc

    return np.frombuffer(Blosc().decode(chunk), dtype=dtype).reshape(shape)


class _Series:
    """What the event thread knows about one open series."""

    def __init__(self, start):
        self.start = start
        self.sums: dict[int, tuple] = {}  # position -> (compressed sum, frames, centre, valid)
        self.chain: SeriesChain | None = None
        self.ready: list = []
        self.ready_since = 0.0
        self.failed: str | None = None
        self.found = 0
        self.beyond_cache: set[int] = set()  # received and captured, but not kept for phasing


class LivePipeline:
    """Ingest + chain; `run()` blocks until `stop()` (or `max_series` series are done)."""

    def __init__(self, settings: LiveSettings, phaser: ParticlePhaser | None = None, max_series: int | None = None,
                 on_status=None):
        from simed_stream.ingest import Receiver, ReceiverSettings

        self.settings = settings
        self.out_dir = Path(settings.out_dir)
        check_writable(self.out_dir)
        self.fanout = None
        self.phaser = phaser or ParticlePhaser(settings.model, settings.device, passes=settings.chain.uncertainty_passes)
        if settings.phasing_workers > 0:  # after the model loaded: a bad model leaves no workers behind
            from simed_stream.fanout import PhasingFanout

            self.fanout = PhasingFanout(settings.phasing_workers)
            self.phaser.pool = self.fanout
        self.max_series = max_series
        self.on_status = on_status
        self.results: list[SeriesResult] = []
        self.errors: list[str] = []
        self._events: queue.Queue = queue.Queue(maxsize=settings.event_queue)
        # batches and finishes, in order; bounded, so a phaser that falls behind blocks the event
        # thread, whose full queue then back-pressures the receiver (memory stays bounded)
        self._tasks: queue.Queue = queue.Queue(maxsize=64)
        self._series: dict[str, _Series] = {}
        self._cached_bytes = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counters = dict(series_open=0, series_done=0, particles_found=0, particles_phased=0,
                              particles_flagged=0, phasing_queue=0)
        self._last_phased_at: float | None = None
        self._overview_at: dict[str, float] = {}
        self.latency_s: dict[str, float] = {}  # overview arrival → last particle in the stack
        self._started = time.time()
        receiver_settings = ReceiverSettings(self.out_dir / "captures", settings.data_endpoint,
                                             settings.max_message_bytes, series_timeout_s=settings.series_timeout_s,
                                             overview_grace_s=settings.overview_timeout_s)
        self.receiver = Receiver(receiver_settings, on_series_closed=lambda s: self._put("closed", s), listener=self)

    # -- receiver hooks (processing thread): hand over, nothing else
    def series_started(self, start) -> None:
        self._put("start", start)

    def position(self, series_id, position, chunk, count, centre, valid) -> None:
        self._put("position", (series_id, position, chunk, count, tuple(centre), valid))

    def overview(self, series_id, message) -> None:
        self._put("overview", (series_id, message, time.monotonic()))

    def _put(self, kind, payload) -> None:
        self._events.put((kind, payload))  # blocks when full: back-pressure, not loss

    # -- lifecycle
    def run(self) -> list[SeriesResult]:
        import zmq

        try:
            self.receiver.start()
        except zmq.ZMQError as error:
            if self.fanout is not None:
                self.fanout.close()
            raise SimedError(f"cannot connect to {self.settings.data_endpoint}: {error}") from None
        threads = [threading.Thread(target=self._event_loop, name="simed-live-events", daemon=True),
                   threading.Thread(target=self._phase_loop, name="simed-live-phasing", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while not self._stop.is_set():
                self._stop.wait(self.settings.status_interval_s)
                self.write_status()
                if self.receiver.error is not None:
                    raise SimedError(f"receiver failed: {self.receiver.error}")
                if self.max_series is not None and len(self.results) >= self.max_series:
                    break
        finally:
            self.receiver.stop()  # closes open series: their captures are complete, events queued
            self._events.put(("drain", None))
            threads[0].join()
            self._tasks.put(("quit", None, None))
            threads[1].join(timeout=self.settings.phasing_join_timeout_s)
            if threads[1].is_alive():
                log.error("phasing did not finish within %g s of the stop; its captures are complete",
                          self.settings.phasing_join_timeout_s)
            if self.fanout is not None:
                self.fanout.close()
            self.write_status(final=True)
        return self.results

    def stop(self) -> None:
        self._stop.set()

    # -- event thread
    def _event_loop(self) -> None:
        while True:
            try:
                kind, payload = self._events.get(timeout=0.1)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if kind == "drain":
                    try:
                        for series_id in list(self._series):  # the receiver closed them all already
                            self._finish(series_id, ["stopped before the series closed"])
                    finally:
                        return
                getattr(self, f"_on_{kind}")(payload)
            except Exception as error:  # one series' failure must not stop the others
                log.exception("live pipeline: %s event failed", kind)
                self.errors.append(f"{kind}: {error}")
            self._schedule()

    def _on_tick(self, _payload) -> None:
        pass

    def _on_start(self, start) -> None:
        self._series[start.series_id] = _Series(start)
        with self._lock:
            self._counters["series_open"] = len(self._series)

    def _on_position(self, payload) -> None:
        series_id, position, chunk, count, centre, valid = payload
        series = self._series.get(series_id)
        if series is None:
            return
        if series.chain is not None:  # overview already in: use it now, keep nothing
            if position in series.chain.waiting:
                self._offer(series, position, (chunk, count, centre, valid))
            return
        if self._cached_bytes + len(chunk) > self.settings.max_cached_bytes:
            series.failed = series.failed or ("position sums beyond the live cache "
                                              f"({self.settings.max_cached_bytes} bytes): reprocess the capture")
            series.beyond_cache.add(position)
            return
        series.sums[position] = (chunk, count, centre, valid)
        self._cached_bytes += len(chunk)

    def _on_overview(self, payload) -> None:
        series_id, message, arrived = payload
        series = self._series.get(series_id)
        if series is None or series.chain is not None:
            return
        self._overview_at[series_id] = arrived
        start = series.start
        try:
            calibration = ScanCalibration.from_headers(start.header, message.header)
            bad = start.pixel_mask.astype(bool) if start.pixel_mask is not None else None
            series.chain = SeriesChain(self.phaser, self.settings.chain, series_id, self._series_dir(series_id),
                                       message.image.astype(np.float64), calibration, bad)
        except Exception as error:  # unusable overview or calibration: say which, keep ingesting
            series.failed = f"not phased: {error}"
            log.error("series %s: %s", series_id, error)
            return
        series.found = series.chain.result.picks
        with self._lock:
            self._counters["particles_found"] += series.found
        for position in series.chain.positions_needed():
            cached = series.sums.get(position)
            if cached is not None:
                self._offer(series, position, cached)
        self._release(series)

    def _series_dir(self, series_id: str) -> Path:
        """A folder of its own: a series id seen again (a looping detector) never overwrites a stack."""
        from simed_stream.ingest import _safe_name

        base = _safe_name(series_id)
        path, counter = self.out_dir / base, 1
        while path.exists():
            counter += 1
            path = self.out_dir / f"{base}-{counter}"
        return path

    def _offer(self, series: _Series, position: int, data) -> None:
        chunk, count, centre, valid = data
        start = series.start
        frame = _decompress(chunk, np.dtype(_sum_dtype(start.dtype)), start.sig_shape)
        ready = series.chain.offer(position, (frame, count, np.asarray(centre), valid))
        if ready and not series.ready:
            series.ready_since = time.monotonic()
        series.ready.extend(ready)

    def _on_closed(self, summary) -> None:
        series = self._series.get(summary.series_id)
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
                    self._offer(series, position, cached)
        self._finish(summary.series_id, list(summary.notes), summary.accounting)

    def _finish(self, series_id: str, notes: list[str], accounting: dict | None = None) -> None:
        series = self._series.pop(series_id)
        self._release(series)
        if series.chain is not None:
            if series.ready:
                self._tasks.put(("phase", series_id, (series.chain, series.ready)))
            if series.failed:  # e.g. position sums dropped from the live cache: say why particles lack data
                notes = notes + [series.failed]
            self._tasks.put(("finish", series_id, (series.chain, notes, accounting)))
        else:
            cache_only = series.failed is not None and "live cache" in series.failed
            status = NO_OVERVIEW if series.failed is None or cache_only else series.failed
            advice = ("captured frames kept in captures/; `simed reprocess` it once an overview is added"
                      if status == NO_OVERVIEW else "captured frames kept in captures/")
            result = SeriesResult(series_id, self._series_dir(series_id), status, accounting=accounting,
                                  notes=notes + ([series.failed] if cache_only else []) + [advice])
            self._done(result, save=True)
        with self._lock:
            self._counters["series_open"] = len(self._series)

    def _release(self, series: _Series) -> None:
        freed = sum(len(c) for c, *_ in series.sums.values())
        series.sums.clear()
        self._cached_bytes -= freed

    def _schedule(self) -> None:
        now = time.monotonic()
        size, latency = self.settings.chain.batch_size, self.settings.batch_latency_s
        for series_id, series in self._series.items():
            while len(series.ready) >= size:
                self._tasks.put(("phase", series_id, (series.chain, series.ready[:size])))
                series.ready = series.ready[size:]
                series.ready_since = now
            if series.ready and now - series.ready_since >= latency:
                self._tasks.put(("phase", series_id, (series.chain, series.ready)))
                series.ready = []
        with self._lock:
            self._counters["phasing_queue"] = self._tasks.qsize()

    # -- phasing thread
    def _phase_loop(self) -> None:
        while True:
            kind, series_id, payload = self._tasks.get()
            if kind == "quit":
                return
            try:
                if kind == "phase":
                    chain, batch = payload
                    chain.phase(batch)
                    with self._lock:
                        self._counters["particles_phased"] += len(batch)
                    if series_id in self._overview_at:
                        self.latency_s[series_id] = time.monotonic() - self._overview_at[series_id]
                elif kind == "finish":
                    chain, notes, accounting = payload
                    result = chain.finish(notes, accounting)
                    with self._lock:
                        self._counters["particles_flagged"] += sum(result.flagged.values())
                    self._done(result)
            except Exception as error:
                log.exception("live pipeline: phasing series %s failed", series_id)
                self.errors.append(f"{series_id}: {error}")
                chain = payload[0]
                if kind == "phase":  # these particles are in no stack: flag them, and fail the series
                    for particle in payload[1]:
                        particle.flag = particle.flag or f"phasing or writing failed: {error}"
                    if chain.result.status == "phased":
                        chain.result.status = f"failed: {error}"
                elif kind == "finish":
                    chain.result.status = f"failed: {error}"  # keep its flags, notes and accounting
                    self._done(chain.result, save=True)

    def _done(self, result: SeriesResult, save: bool = False) -> None:
        if result.series_id in self.latency_s:
            result.seconds["overview_to_last_particle"] = self.latency_s[result.series_id]
            save = True
        if save:
            try:  # a full disk must not lose the series' result nor stop the thread that reports it
                write_result(result.out_dir, result)
            except OSError as error:
                log.error("series %s: cannot write its result.json: %s", result.series_id, error)
                self.errors.append(f"{result.series_id}: cannot write result.json: {error}")
        with self._lock:
            self.results.append(result)
            self._counters["series_done"] = len(self.results)
        log.info("series %s: %s, %d picks, %d phased", result.series_id, result.status, result.picks, result.phased)

    # -- telemetry
    def status(self) -> dict:
        ingest = self.receiver.status()
        with self._lock:
            pipeline = dict(self._counters)
        pipeline["event_queue"] = self._events.qsize()
        closed = [s.accounting for s in list(self.receiver.closed)]
        ingest["frames_dropped_at_source"] = int(sum(a.get("dropped_at_source", 0) for a in
                                                     closed + list(ingest["open_series"].values())))
        ingest["frames_missing"] = int(sum(a.get("missing", 0) for a in closed))  # open series: not yet known
        pipeline["cached_bytes"] = self._cached_bytes
        return {"time_unix_s": round(time.time(), 3), "uptime_s": round(time.time() - self._started, 1),
                "ingest": {k: ingest[k] for k in ("frames_per_s", "frames_received", "frames_rejected",
                                                   "frames_dropped_at_source", "frames_missing",
                                                   "rejected_messages", "duplicates", "msg_seq_gaps", "queue_depth",
                                                   "queue_capacity", "lag_s", "internal_errors")},
                "open_series": ingest["open_series"], "pipeline": pipeline,
                "series": [{"series_id": r.series_id, "status": r.status, "picks": r.picks, "phased": r.phased,
                            "flagged": sum(r.flagged.values())} for r in self.results[-50:]],
                "errors": self.errors[-20:]}

    def write_status(self, final: bool = False) -> dict:
        status = self.status()
        status["state"] = "stopped" if final else "running"
        path = self.out_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, indent=1))
            tmp.replace(path)
        except OSError as error:  # a full disk must not stop ingest; say so where the operator looks
            log.error("cannot write %s: %s", path, error)
        if self.on_status:
            self.on_status(status)
        return status


def _sum_dtype(frame_dtype: np.dtype) -> np.dtype:
    from simed_stream.capture import position_sum_dtype

    return position_sum_dtype(np.dtype(frame_dtype))


def status_line(status: dict) -> str:
    ingest, pipeline = status["ingest"], status["pipeline"]
    return (f"{ingest['frames_per_s']:8.0f} frames/s | received {ingest['frames_received']} | rejected "
            f"{ingest['frames_rejected']} | dropped {ingest['frames_dropped_at_source'] + ingest['frames_missing']} | queue {ingest['queue_depth']}/{ingest['queue_capacity']} | lag "
            f"{ingest['lag_s']:.2f} s | series open {pipeline['series_open']} done {pipeline['series_done']} | "
            f"particles found {pipeline['particles_found']} phased {pipeline['particles_phased']} "
            f"flagged {pipeline['particles_flagged']}")


def replay_capture(capture: Path, out: Path, chain, model: Path, device: str = "auto", rate="recorded",
                   data_endpoint: str | None = None, on_status=None, run=None, phasing_workers: int = 0):
    """Stream a capture through the live pipeline; returns the pipeline (results, status) when done.

    A paced fake detector replays it on a private local socket, unless `data_endpoint` names a
    detector already streaming it. `run(pipeline)` runs the pipeline (default `pipeline.run()`;
    the CLI passes one that maps Ctrl-C to a clean stop)."""
    import tempfile
    import threading

    from simulator.detector import FakeDetector, capture_series

    if not capture.is_file():
        raise SimedError(f"capture {capture} does not exist")
    try:
        source = capture_series(capture)
    except (ValueError, OSError, KeyError) as error:
        raise SimedError(f"cannot replay {capture}: {error}") from None
    with tempfile.TemporaryDirectory(prefix="simed-replay-") as tmp:
        endpoint = data_endpoint or f"ipc://{tmp}/data.sock"
        settings = LiveSettings(out, model, endpoint, device, chain, overview_timeout_s=5.0,
                                phasing_workers=phasing_workers)
        pipeline = LivePipeline(settings, max_series=1, on_status=on_status)
        run = run or (lambda p: p.run())
        if data_endpoint is not None:
            run(pipeline)
            return pipeline
        failure = []

        def stream():
            try:
                with FakeDetector(endpoint, control_endpoint=None, rate_fps=rate,
                                  max_message_bytes=settings.max_message_bytes) as detector:
                    detector.run([source])
            except Exception as error:  # reported below; the pipeline times the series out
                failure.append(error)

        thread = threading.Thread(target=stream, name="simed-replay-detector", daemon=True)
        thread.start()
        run(pipeline)
        thread.join(timeout=30)
        if failure:
            raise SimedError(f"the replaying detector failed: {failure[0]}")
        return pipeline
