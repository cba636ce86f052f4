"""The live pipeline's telemetry: counters its threads update, `status.json` and the console line."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from simed_stream.chain import SeriesResult
from simed_stream.files import write_text_atomically

log = logging.getLogger("simed_stream.live")

INGEST_KEYS = ("frames_per_s", "frames_received", "frames_rejected", "frames_dropped_at_source", "frames_missing",
               "rejected_messages", "duplicates", "msg_seq_gaps", "queue_depth", "queue_capacity", "lag_s",
               "internal_errors", "capture_failures", "last_capture_failure")
_RESULTS_SHOWN, _ERRORS_SHOWN = 50, 20


class LiveCounters:
    """Counters, results and errors shared by the pipeline's threads (all under one lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = dict(series_open=0, series_done=0, particles_found=0, particles_phased=0, particles_flagged=0,
                           phasing_queue=0)
        self.results: list[SeriesResult] = []
        self.errors: list[str] = []

    def add(self, **increments: int) -> None:
        with self.lock:
            for name, value in increments.items():
                self.values[name] += value

    def set(self, **values: int) -> None:
        with self.lock:
            self.values.update(values)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def result(self, result: SeriesResult) -> None:
        with self.lock:
            self.results.append(result)
            self.values["series_done"] = len(self.results)


def live_status(receiver_status: dict, closed_accounting: list[dict], counters: LiveCounters,
                pipeline_extra: dict, started_unix_s: float) -> dict:
    """What `status.json` holds; `pipeline_extra` adds the event thread's own numbers."""
    ingest = dict(receiver_status)
    open_accounting = list(ingest["open_series"].values())
    ingest["frames_dropped_at_source"] = int(sum(a.get("dropped_at_source", 0) for a in
                                                 closed_accounting + open_accounting))
    ingest["frames_missing"] = int(sum(a.get("missing", 0) for a in closed_accounting))  # open series: not yet known
    with counters.lock:
        pipeline = dict(counters.values, **pipeline_extra)
        series = [{"series_id": r.series_id, "status": r.status, "picks": r.picks, "phased": r.phased,
                   "flagged": sum(r.flagged.values()), "resolution_estimate_A": r.resolution_estimate_A}
                  for r in counters.results[-_RESULTS_SHOWN:]]
        errors = counters.errors[-_ERRORS_SHOWN:]
    now = time.time()
    return {"time_unix_s": round(now, 3), "uptime_s": round(now - started_unix_s, 1),
            "ingest": {key: ingest[key] for key in INGEST_KEYS}, "open_series": ingest["open_series"],
            "pipeline": pipeline, "series": series, "errors": errors}


def write_status(path: Path, status: dict) -> None:
    """Replace `status.json`; a full disk must not stop ingest: say so where the operator looks."""
    try:
        write_text_atomically(path, json.dumps(status, indent=1), durable=False)  # rewritten every second
    except OSError as error:
        log.error("cannot write %s: %s", path, error)


def status_line(status: dict) -> str:
    ingest, pipeline = status["ingest"], status["pipeline"]
    dropped = ingest["frames_dropped_at_source"] + ingest["frames_missing"]
    return (f"{ingest['frames_per_s']:8.0f} frames/s | received {ingest['frames_received']} | rejected "
            f"{ingest['frames_rejected']} | dropped {dropped} | queue {ingest['queue_depth']}/"
            f"{ingest['queue_capacity']} | lag {ingest['lag_s']:.2f} s | series open {pipeline['series_open']} "
            f"done {pipeline['series_done']} | particles found {pipeline['particles_found']} phased "
            f"{pipeline['particles_phased']} flagged {pipeline['particles_flagged']}"
            + (f" | CAPTURE FAILED: {ingest['last_capture_failure']}" if ingest.get("capture_failures") else ""))
