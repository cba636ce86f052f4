"""Benchmark live ingest per source, against simed-stream/1 in the same run.

A simulated detector runs in its own process (`simed detector --synthetic --source S`),
streaming 256×256 uint16 frames (simed-stream/1 in batches of 64; DECTRIS, Merlin and Serval
one frame a message, as those detectors send them). In the same run:
  (a) raw: receive and discard simed-stream/1 messages (the transport's ceiling),
  (b) ingest through each source's adapter — receive, decode, place on the scan, validate, sum
      and centre per position, compress, capture — as fast as the detector sends,
  (c) paced: the same with the detector paced at 2 000 frames/s (ASI Cheetah, 12 bit).
Rates are frames over the time from the first frame received to the last one handled. One JSON
line per source; `ratio_to_simed` is its ingest rate over simed-stream/1's (goal ≥ 0.8); simed's
has `ratio` (ingest over raw; `ratio_to_raw`, the same). `cpu_us_per_frame`: this process's CPU
(all its threads, user + system; the detector is another process) per frame received.

    python tools/bench_ingest.py [--source simed,dectris,merlin,serval] [--frames 20000] [--paced-frames 20000]

With --profile, --baseline REV, --curve or --repeats K it studies simed-stream/1's CPU instead
(`ingest_study.py`): (a) and (b) K times, alternating, each (b) in a fresh child process; the CPU µs
per frame of every ingest stage; another revision's code in the same run (`cpu_ratio`); the cost
of CURVE encryption. Its last line is JSON.

    python tools/bench_ingest.py --profile [--baseline 654b73f] [--curve] [--repeats 3] [--frames 20000]

With --web it measures instead what the live page costs ingest (`bench_web.py`): the whole live
pipeline at full speed without the page, then with it open in headless Chromium and another
process polling /api/status at 10 Hz, `--pairs` times; its last line is JSON with the ratio.

    python tools/bench_ingest.py --web [--frames 20000] [--pairs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench_data import free_endpoint  # beside this file: a script's folder is on sys.path

SHAPE = (256, 256)
FRAMES_PER_POSITION = 4
SOURCES = ("simed", "dectris", "merlin", "serval")


def _nav(frames: int) -> tuple[int, int]:
    positions = frames // FRAMES_PER_POSITION
    nx = 100 if positions % 100 == 0 else positions
    return positions // nx, nx


def _start_detector(source: str, endpoint: str, frames: int, rate: str, flags: list[str] = ()) -> subprocess.Popen:
    ny, nx = _nav(frames)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # bitshuffle's OpenMP, in the DECTRIS simulator
    source_flag = [] if source == "simed" else ["--source", source]  # (older revisions have no --source)
    return subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "detector", "--synthetic", *source_flag,
                             "--nav-shape", f"{ny}x{nx}", "--sig-shape", f"{SHAPE[0]}x{SHAPE[1]}",
                             "--frames-per-position", str(FRAMES_PER_POSITION), "--batch-frames", "64",
                             "--rate", rate, "--data", endpoint, "--control", "none", "--series-id", "bench", *flags],
                            stdout=subprocess.DEVNULL, env=env)


class CpuMeter:
    """This process's CPU time (all threads, user + system), and its ZeroMQ I/O threads', between two reads."""

    def __enter__(self) -> "CpuMeter":
        self.start, self.start_zmq = _process_cpu_s(), _zmq_io_cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = _process_cpu_s() - self.start
        self.zmq_seconds = _zmq_io_cpu_s() - self.start_zmq


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _zmq_io_cpu_s() -> float:
    """CPU of the threads libzmq names ZMQbg/IO/n (user + system, clock ticks)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("ZMQbg/IO"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:  # the thread ended meanwhile
            continue
    return total / os.sysconf("SC_CLK_TCK")


def raw(frames: int) -> dict:
    """Receive and discard: the ceiling ZeroMQ and Python give between two processes."""
    endpoint = free_endpoint()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(endpoint)
    detector = _start_detector("simed", endpoint, frames, "max")
    received, first = 0, None
    with CpuMeter() as cpu:
        while True:
            parts = pull.recv_multipart(copy=False)
            header = json.loads(bytes(parts[0].buffer))
            if header["htype"] == "frames":
                first = first or time.perf_counter()
                received += header["count"]
                last = time.perf_counter()
            elif header["htype"] == "series_end":
                break
    detector.wait()
    pull.close(0)
    context.term()
    return {"frames": received, "fps": received / (last - first), "cpu_us_per_frame": cpu.seconds / received * 1e6}


def ingest(source: str, frames: int, rate: str, options: dict | None = None, detector_flags: list[str] = ()) -> dict:
    """One series through the receiver; `options`: more receiver settings (e.g. its keys)."""
    from simed_stream.ingest import Receiver, ReceiverSettings

    endpoint = free_endpoint()
    with tempfile.TemporaryDirectory() as folder:
        extra = dict(options or {})
        if source != "simed":  # (a setting older revisions do not have)
            extra |= {"source": source, "scan": {"shape": _nav(frames), "frames_per_position": FRAMES_PER_POSITION}}
        settings = ReceiverSettings(capture_dir=Path(folder), data_endpoint=endpoint, overview_grace_s=1.0,
                                    max_message_bytes=64 << 20, **extra)
        with Receiver(settings) as receiver:
            with CpuMeter() as cpu:
                detector = _start_detector(source, endpoint, frames, rate, detector_flags)
                summary = receiver.wait_for_series(1, 600)[0]
            detector.wait()
            status = receiver.status()
        capture_bytes = summary.path.stat().st_size
    a = summary.accounting
    received = max(1, a["received"])
    return {"frames": a["received"], "fps": a["received"] / summary.ingest_seconds,
            "dropped": a["dropped_at_source"] + a["missing"] + a["rejected"], "accounting": a,
            "capture_MB": round(capture_bytes / 1e6, 1), "rejected_messages": status["rejected_messages"],
            "cpu_us_per_frame": cpu.seconds / received * 1e6, "zmq_io_us_per_frame": cpu.zmq_seconds / received * 1e6,
            "stages_us_per_frame": status.get("cpu_us_per_frame", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=",".join(SOURCES), help="comma-separated; simed always runs (the baseline)")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--paced-frames", type=int, default=20000)
    parser.add_argument("--web", action="store_true", help="what the live page costs ingest (see above)")
    parser.add_argument("--pairs", type=int, default=6, help="with --web: runs without and with the page")
    add_study_options(parser)
    args = parser.parse_args()
    if args.web:
        import bench_web

        return bench_web.compare(args.frames, args.pairs)
    if args.measure or args.profile or args.baseline or args.curve or args.repeats > 1:
        import ingest_study

        return ingest_study.study(args)
    sources = ["simed"] + [s for s in args.source.split(",") if s and s != "simed"]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}")
    for source in sources:  # warm up: numba's cache, the page cache, each adapter's imports
        ingest(source, 2000, "max")
    ceiling = raw(args.frames)
    print(f"(a) raw transport: {ceiling['fps']:.0f} frames/s", flush=True)
    baseline = None
    for source in sources:
        full = ingest(source, args.frames, "max")
        baseline = baseline or full["fps"]
        paced = ingest(source, args.paced_frames, "2000")
        print(f"{source}: (b) full ingest {full['fps']:.0f} frames/s, {full['dropped']} not received; "
              f"(c) paced 2000/s: {paced['dropped']} not received", flush=True)
        line = {"source": source, "shape": list(SHAPE), "dtype": "uint16", "frames": args.frames,
                "ingest_fps": round(full["fps"]), "ratio_to_simed": round(full["fps"] / baseline, 3),
                "cpu_us_per_frame": round(full["cpu_us_per_frame"], 1),
                "dropped": full["dropped"], "rejected_messages": full["rejected_messages"],
                "paced_2000": {"frames": args.paced_frames, "dropped": paced["dropped"], "fps": round(paced["fps"])},
                "capture_MB": full["capture_MB"]}
        if source == "simed":
            ratio = round(full["fps"] / ceiling["fps"], 3)
            line |= {"raw_fps": round(ceiling["fps"]), "ratio": ratio, "ratio_to_raw": ratio,
                     "raw_cpu_us_per_frame": round(ceiling["cpu_us_per_frame"], 1)}
        print(json.dumps(line), flush=True)


def add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", action="store_true", help="CPU µs per frame of each ingest stage")
    parser.add_argument("--baseline", metavar="REV", help="also measure another git revision's code, same run")
    parser.add_argument("--curve", action="store_true", help="also measure ingest over CURVE (keys made for the run)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate (a) and (b) this many times, medians")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # a study's child: one (b)
    parser.add_argument("--rate", default="max", help=argparse.SUPPRESS)


if __name__ == "__main__":
    main()
