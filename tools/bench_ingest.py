"""Benchmark live ingest: the transport ceiling against full ingest, in one run, and its CPU cost.

The fake detector runs in its own process (`simed detector --synthetic`), streaming 256×256
uint16 frames in batches of 64. In the same run:
  (a) raw: a receiver that only receives the messages and discards them (the ceiling),
  (b) ingest: the real receiver — receive, validate, sum and centre per position, compress,
      write the capture — as fast as the detector can send,
  (c) paced: the real receiver with the detector paced at 2 000 frames/s (ASI Cheetah, 12 bit).
Rates are frames over the time from the first frame received to the last one handled. CPU is
this process's (the detector is another process): user + system time of all its threads over
the run, per frame received.

  --repeats K      (a) and (b) K times, alternating, medians reported (the machine is shared)
  --profile        CPU µs per frame of each ingest stage (`simed_stream/ingest/stages.py`), of
                   ZeroMQ's I/O thread, and the rest
  --baseline REV   (b) also with another revision's `simed_stream` (git archive into a temporary
                   folder, run in a child process), alternating with ours: `cpu_ratio` and
                   `fps_ratio` against it
  --curve          (b) also over CURVE (keys made for the run): what encryption costs ingest

The last line printed is JSON.

    python tools/bench_ingest.py [--frames 20000] [--paced-frames 20000] [--repeats 3] [--profile]
                                 [--baseline main] [--curve]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

SHAPE = (256, 256)
FRAMES_PER_POSITION = 4
ROOT = Path(__file__).resolve().parent.parent


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _start_detector(endpoint: str, frames: int, rate: str, keys: list[str] = ()) -> subprocess.Popen:
    positions = frames // FRAMES_PER_POSITION
    nx = 100 if positions % 100 == 0 else positions
    nav = f"{positions // nx}x{nx}"
    return subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "detector", "--synthetic",
                             "--nav-shape", nav, "--sig-shape", f"{SHAPE[0]}x{SHAPE[1]}",
                             "--frames-per-position", str(FRAMES_PER_POSITION), "--batch-frames", "64",
                             "--rate", rate, "--data", endpoint, "--control", "none", "--series-id", "bench", *keys],
                            stdout=subprocess.DEVNULL)


class CpuMeter:
    """This process's CPU time (all threads) and that of ZeroMQ's I/O threads, between two reads."""

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
    endpoint = _endpoint()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(endpoint)
    detector = _start_detector(endpoint, frames, "max")
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


def ingest(frames: int, rate: str, curve: bool = False) -> dict:
    from simed_stream.ingest import Receiver, ReceiverSettings

    endpoint = _endpoint()
    with tempfile.TemporaryDirectory() as folder:
        options, keys = {}, []
        if curve:
            options, keys = _curve_keys(Path(folder))
        settings = ReceiverSettings(capture_dir=Path(folder) / "captures", data_endpoint=endpoint,
                                    overview_grace_s=1.0, max_message_bytes=64 << 20, **options)
        with Receiver(settings) as receiver:
            with CpuMeter() as cpu:
                detector = _start_detector(endpoint, frames, rate, keys)
                summary = receiver.wait_for_series(1, 600)[0]
            detector.wait()
            status = receiver.status()
        capture_bytes = summary.path.stat().st_size
    a = summary.accounting
    received = max(1, a["received"])
    return {"frames": a["received"], "fps": a["received"] / summary.ingest_seconds,
            "dropped": a["dropped_at_source"] + a["missing"] + a["rejected"], "accounting": a,
            "capture_MB": round(capture_bytes / 1e6, 1), "rejected_messages": status["rejected_messages"],
            "cpu_us_per_frame": cpu.seconds / received * 1e6,
            "stages_us_per_frame": status.get("cpu_us_per_frame", {}),
            "zmq_io_us_per_frame": cpu.zmq_seconds / received * 1e6}


def _curve_keys(folder: Path) -> tuple[dict, list[str]]:
    """Key pairs for a detector and a receiver that trust each other: (receiver settings, detector flags)."""
    from simed_stream.keys import create_key_pair

    detector, receiver = create_key_pair(folder / "detector", "detector"), create_key_pair(folder / "rx", "receiver")
    security = {"secret_key": receiver.secret, "server_key": detector.public}
    return ({"security": security},
            ["--secret-key", str(detector.secret), "--authorized-keys", str(receiver.public.parent)])


def _baseline_tree(revision: str, folder: Path) -> Path:
    """`simed_stream` and `simulator` of `revision`, exported into `folder`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "simed_stream", "simulator"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def measure(tree: Path, frames: int, rate: str = "max", **options) -> dict:
    """`ingest` with the package in `tree`, in a fresh child process (this file, `--measure`):
    ours and the baseline's alike, so neither inherits the other's heap or caches."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    flags = [f"--{key}" if value is True else f"--{key}={value}" for key, value in options.items() if value]
    done = subprocess.run([sys.executable, __file__, "--measure", "--frames", str(frames), "--rate", rate, *flags],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratio(runs: list[dict], others: list[dict], key: str) -> float:
    return round(statistics.median(run[key] / other[key] for run, other in zip(runs, others)), 3)


def _profile_table(runs: list[dict]) -> dict:
    stages = {stage: statistics.median(run["stages_us_per_frame"][stage] for run in runs)
              for stage in runs[0]["stages_us_per_frame"]}
    total = _median(runs, "cpu_us_per_frame")
    zmq_io = _median(runs, "zmq_io_us_per_frame")
    table = dict(stages, zmq_io_thread=zmq_io, other=total - sum(stages.values()) - zmq_io, total=total)
    print("CPU µs per frame, by stage (medians):", flush=True)
    for stage, value in table.items():
        print(f"  {stage:>14}: {value:7.1f}", flush=True)
    return {stage: round(value, 1) for stage, value in table.items()}


def _summary(runs: list[dict], ceilings: list[dict]) -> dict:
    return {"ingest_fps": round(_median(runs, "fps")), "ratio": _ratio(runs, ceilings, "fps"),
            "cpu_us_per_frame": round(_median(runs, "cpu_us_per_frame"), 1),
            "capture_MB": runs[-1]["capture_MB"], "dropped": sum(run["dropped"] for run in runs)}


def run_all(args, ours: Path, baseline: Path | None) -> dict[str, list[dict]]:
    """(a) and each kind of (b), alternating, `args.repeats` times."""
    kinds = {"ingest": lambda: measure(ours, args.frames)}
    if baseline is not None:
        kinds["baseline"] = lambda: measure(baseline, args.frames)
    if args.curve:
        kinds["curve"] = lambda: measure(ours, args.frames, curve=True)
    runs: dict[str, list[dict]] = {"raw": [], **{kind: [] for kind in kinds}}
    for repeat in range(args.repeats):
        runs["raw"].append(raw(args.frames))
        for kind, run in kinds.items():
            runs[kind].append(run())
        print(f"[{repeat + 1}/{args.repeats}] " + " | ".join(
            f"{kind} {runs[kind][-1]['fps']:.0f} frames/s ({runs[kind][-1]['cpu_us_per_frame']:.0f} µs/frame)"
            for kind in runs), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--paced-frames", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--baseline", metavar="REV")
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one (b), as JSON
    parser.add_argument("--rate", default="max", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        ingest(2000, "max", args.curve)  # warm up: numba's cache, the page cache
        print(json.dumps(ingest(args.frames, args.rate, args.curve)))
        return
    import simed_stream

    ours = Path(simed_stream.__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="simed-baseline-") as folder:
        baseline = _baseline_tree(args.baseline, Path(folder)) if args.baseline else None
        runs = run_all(args, ours, baseline)
        paced = measure(ours, args.paced_frames, "2000")
    print(f"(c) paced 2000/s: {paced['fps']:.0f} frames/s, {paced['dropped']} not received, "
          f"{paced['cpu_us_per_frame']:.0f} µs/frame", flush=True)
    ceilings = runs["raw"]
    result = {"shape": list(SHAPE), "dtype": "uint16", "frames": args.frames, "repeats": args.repeats,
              "raw_fps": round(_median(ceilings, "fps")),
              "raw_cpu_us_per_frame": round(_median(ceilings, "cpu_us_per_frame"), 1),
              **_summary(runs["ingest"], ceilings),
              "paced_2000": {"frames": args.paced_frames, "dropped": paced["dropped"], "fps": round(paced["fps"]),
                             "cpu_us_per_frame": round(paced["cpu_us_per_frame"], 1)}}
    if args.profile:
        result["profile_us_per_frame"] = _profile_table(runs["ingest"])
    if baseline is not None:
        result["baseline"] = dict(_summary(runs["baseline"], ceilings), revision=args.baseline)
        result["cpu_ratio"] = _ratio(runs["ingest"], runs["baseline"], "cpu_us_per_frame")
        result["fps_ratio"] = _ratio(runs["ingest"], runs["baseline"], "fps")
    if args.curve:
        result["curve"] = dict(_summary(runs["curve"], ceilings), cpu_ratio=_ratio(runs["curve"], runs["ingest"],
                                                                                    "cpu_us_per_frame"),
                               fps_ratio=_ratio(runs["curve"], runs["ingest"], "fps"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
