"""Soak: the receiver under a long stream with faults, checked for exact accounting and leaks.

    python tools/soak.py --seconds 60 [--rate 2000] [--sig-shape 256x256] [--warmup-s 10]

A fake detector (simed_stream/detectors/simed, in a child process so that this process is the
receiver alone) streams series after series at `--rate` frames/s, cycling through several scan
shapes, with mixed faults: per message lost in transit, dropped at source, reordered,
duplicated, truncated, garbage, wrong shape, wrong dtype; per series one oversize message; every
fifth series a disconnect and reconnect. This process runs the real Receiver; each closed series
is checked — received + rejected + dropped at source + missing = expected — and compared with
what the detector reports it did to that series, then its capture is deleted (30 minutes at
2 000 frames/s would not fit on a disk otherwise).

Once a second it reads its own resident memory (VmRSS, and the peak VmHWM, /proc/self/status),
open descriptors (/proc/self/fd) and threads (/proc/self/task). Growth is counted after the
warm-up (one-time allocations: numba, HDF5, ZeroMQ's buffers, the first captures): descriptors
and threads at the end less at the end of the warm-up; `rss_growth_MB` the median RSS of the
last third of the samples after the warm-up less that of the first third (see `_rss_growth`).
The last line printed is one JSON object; the exit status is 0 when every series balanced and
agreed with the detector's own count of what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # simed_stream and simulator, from this checkout
from bench_data import free_endpoint  # noqa: E402  (beside this file: a script's folder is on sys.path)
FAULTS = ("drop=0.01,source_drop=0.01,reorder=0.01,duplicate=0.01,truncate=0.005,garbage=0.005,"
          "wrong_shape=0.005,wrong_dtype=0.005,oversize=1")
DISCONNECT_EVERY = 5  # series; a disconnect costs the detector ~0.3 s and a reconnection
NAV_SHAPES = ((16, 16), (24, 24), (20, 30))  # several series kinds, cycled
FRAMES_PER_POSITION = 4
MAX_MESSAGE_BYTES = 16 << 20  # small enough that the oversize fault stays cheap


# -- the detector (child process) ------------------------------------------------------------

def detector(args) -> None:
    """Stream series until `--seconds` are up; after each, one JSON line: what its faults did."""
    from simed_stream.detectors.simed.fake import FakeDetector
    from simed_stream.detectors.simed.faults import FaultPlan, FaultReport
    from simulator.synthetic import synthetic_series

    plain, with_disconnect = FaultPlan.parse(args.faults), FaultPlan.parse(args.faults + ",disconnect=1")
    deadline = time.monotonic() + args.seconds
    with FakeDetector(args.detector, None, rate_fps=args.rate, faults=plain, seed=args.seed,
                      max_message_bytes=MAX_MESSAGE_BYTES, peer_timeout_s=60.0) as fake:
        index = 0
        while time.monotonic() < deadline:
            # a fresh report per series: its frame lists would otherwise grow for the whole soak
            fake.injector.report = fake.report = FaultReport()
            fake.faults = with_disconnect if index % DISCONNECT_EVERY == DISCONNECT_EVERY - 1 else plain
            series_id = f"soak-{index:05d}"
            fake.run([synthetic_series(series_id, NAV_SHAPES[index % len(NAV_SHAPES)], FRAMES_PER_POSITION,
                                       args.sig_shape, batch_frames=64, seed=index)])
            r = fake.report
            print(json.dumps({"series_id": series_id, "sent_ok": len(set(r.frames_sent_ok)),
                              "bad": len(set(r.frames_in_bad_messages)),
                              "lost": len(set(r.frames_lost_in_transit) | set(r.frames_in_garbage)),
                              "dropped_at_source": len(r.frames_dropped_at_source)}), flush=True)
            index += 1


# -- the receiver (this process, measured) ---------------------------------------------------

def _status_kB(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def sample() -> dict:
    return {"rss_MB": _status_kB("VmRSS") / 1024, "peak_MB": _status_kB("VmHWM") / 1024,
            "fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task")),
            "py_threads": threading.active_count()}


class Closed:
    """The receiver's listener: closed series handed to the main thread."""

    def __init__(self):
        from simed_stream.ingest import ReceiverListener

        self.queue: queue.Queue = queue.Queue(maxsize=1000)
        self.listener = type("SoakListener", (ReceiverListener,), {"series_closed": lambda _, s: self.queue.put(s)})()


def _read_reports(stdout, reports: dict, done: threading.Event) -> None:
    for line in stdout:
        if line.startswith("{"):
            report = json.loads(line)
            reports[report["series_id"]] = report
    done.set()


def _check(summary, report: dict | None) -> tuple[bool, bool]:
    """(balanced, the detector's own count agrees)."""
    a = summary.accounting
    balanced = a["received"] + a["rejected"] + a["dropped_at_source"] + a["missing"] == a["frames_expected"]
    agrees = report is not None and (a["received"], a["rejected"], a["missing"], a["dropped_at_source"]) == (
        report["sent_ok"], report["bad"], report["lost"], report["dropped_at_source"])
    return balanced, agrees


def soak(args) -> dict:
    from simed_stream.ingest import Receiver, ReceiverSettings

    endpoint = free_endpoint()
    totals = dict.fromkeys(("frames", "received", "rejected", "dropped_at_source", "missing", "duplicates"), 0)
    series, unbalanced, disagreeing, reports = 0, [], [], {}
    samples, baseline, pending = [], None, {}
    closed = Closed()
    trace = open(args.trace, "w") if args.trace else None
    with tempfile.TemporaryDirectory(prefix="simed-soak-") as folder:
        settings = ReceiverSettings(capture_dir=Path(folder), data_endpoint=endpoint, overview_grace_s=0.2,
                                    series_timeout_s=10.0, max_message_bytes=MAX_MESSAGE_BYTES)
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--detector", endpoint,
                                  "--seconds", str(args.seconds), "--rate", str(args.rate), "--faults", args.faults,
                                  "--sig-shape", f"{args.sig_shape[0]}x{args.sig_shape[1]}", "--seed", str(args.seed)],
                                 stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
                                     filter(None, (str(HERE.parent), os.environ.get("PYTHONPATH"))))))
        child_done = threading.Event()
        reader = threading.Thread(target=_read_reports, args=(child.stdout, reports, child_done), daemon=True)
        reader.start()
        start = time.monotonic()
        next_sample = start
        with Receiver(settings, closed.listener) as receiver:
            while True:
                try:
                    summary = closed.queue.get(timeout=0.2)
                except queue.Empty:
                    summary = None
                if summary is not None:
                    series += 1
                    if summary.path is not None:
                        summary.path.unlink(missing_ok=True)
                    a = summary.accounting
                    totals["frames"] += a["frames_expected"]
                    for key in ("received", "rejected", "dropped_at_source", "missing", "duplicates"):
                        totals[key] += a[key]
                    pending[summary.series_id] = summary
                # the detector's line for a series comes after its series_end: it may follow the summary
                for series_id in [sid for sid in pending if sid in reports or child_done.is_set()]:
                    balanced, agrees = _check(pending.pop(series_id), reports.pop(series_id, None))
                    if not balanced:
                        unbalanced.append(series_id)
                    if not agrees:
                        disagreeing.append(series_id)
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(sample())
                    if trace is not None:
                        trace.write(json.dumps(dict(samples[-1], t_s=round(now - start, 1), series=series)) + "\n")
                        trace.flush()
                    next_sample += 1.0
                    if baseline is None and now - start >= args.warmup_s:
                        baseline, after_warmup = samples[-1], len(samples) - 1
                if child_done.is_set() and child.poll() is not None and closed.queue.empty() and not pending:
                    elapsed_s = now - start  # the last series may run past --seconds: it is finished
                    break
                if now - start > args.seconds + 120:
                    raise TimeoutError("the detector did not finish within 2 minutes of its time")
            if receiver.error is not None:
                raise RuntimeError("receiver processing failed") from receiver.error
            final = sample()  # the receiver still open: its threads and sockets are meant to be there
            rejected_messages = receiver.status()["rejected_messages"]
    if trace is not None:
        trace.close()
    if baseline is None:  # a run shorter than its warm-up: growth from the first second
        baseline, after_warmup = samples[0], 0
    later = samples[after_warmup:] + [final]
    return {"seconds": args.seconds, "rate_fps": args.rate, "sig_shape": list(args.sig_shape), "faults": args.faults,
            "series": series, **totals, "achieved_fps": round(totals["frames"] / elapsed_s), "rejected_messages": rejected_messages,
            "accounting_balanced": not unbalanced and series > 0, "unbalanced_series": unbalanced[:10],
            "matches_detector": not disagreeing, "disagreeing_series": disagreeing[:10],
            "detector_exit": child.returncode, "warmup_s": args.warmup_s,
            "rss_start_MB": round(baseline["rss_MB"], 1), "rss_end_MB": round(final["rss_MB"], 1),
            "rss_peak_MB": round(final["peak_MB"], 1),
            "rss_growth_MB": round(_rss_growth(later), 1),
            "rss_end_minus_start_MB": round(final["rss_MB"] - baseline["rss_MB"], 1),
            "rss_max_after_warmup_MB": round(max(s["rss_MB"] for s in later), 1),
            "open_fds_growth": final["fds"] - baseline["fds"], "threads_growth": final["threads"] - baseline["threads"],
            "python_threads_growth": final["py_threads"] - baseline["py_threads"]}


def _rss_growth(samples: list[dict]) -> float:
    """The median RSS of the last third of `samples` less that of the first third. glibc's heap
    swings by tens of MB as large frame buffers are freed and reused (seen: +120 MB, then -90 MB
    within 10 s, no leak); a leak is a rise that stays, and medians of thirds see that, not a swing."""
    import statistics

    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    return statistics.median(s["rss_MB"] for s in last) - statistics.median(s["rss_MB"] for s in first)


def _shape(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the detector streams")
    parser.add_argument("--rate", type=float, default=2000.0, help="frames per second")
    parser.add_argument("--sig-shape", type=_shape, default=(256, 256), help="frame shape, HxW (uint16)")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="growth is counted from this far in")
    parser.add_argument("--faults", default=FAULTS, help="the fake detector's --faults plan (disconnects added)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", type=Path, help="write every second's sample here, one JSON line each")
    parser.add_argument("--verbose", action="store_true", help="log the receiver's warnings (each fault makes some)")
    parser.add_argument("--detector", metavar="ENDPOINT", help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args()
    if args.detector:
        detector(args)
        return 0
    import logging

    # the faults are meant: their warnings would bury the result (errors still show)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    result = soak(args)
    print(json.dumps(result), flush=True)
    return 0 if result["accounting_balanced"] and result["matches_detector"] else 1


if __name__ == "__main__":
    sys.exit(main())
