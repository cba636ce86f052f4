"""What simed-stream/1 ingest costs in CPU, stage by stage, against another revision and with
CURVE: `python tools/bench_ingest.py --profile [--baseline REV] [--curve] [--repeats K]`.

(a) raw transport and (b) full ingest alternate K times; every (b) runs in a fresh child process
(this tools folder's `bench_ingest.py --measure`), ours and the baseline's alike, so neither
inherits the other's heap, caches or numba state. The baseline is `git archive REV` of
`simed_stream` and `simulator` into a temporary folder, put first on the child's PYTHONPATH (so run this from a
checkout). Medians over the repeats; ratios per repeat, then their median.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_ingest import SHAPE, ingest, raw

HERE = Path(__file__).resolve().parent


def _curve(folder: Path) -> tuple[dict, list[str]]:
    """Key pairs for a detector and a receiver that trust each other: (receiver settings, detector flags)."""
    from simed_stream.keys import create_key_pair

    detector, receiver = create_key_pair(folder / "detector", "detector"), create_key_pair(folder / "rx", "receiver")
    return ({"security": {"secret_key": receiver.secret, "server_key": detector.public}},
            ["--secret-key", str(detector.secret), "--authorized-keys", str(receiver.public.parent)])


def measure_here(args) -> None:
    """One (b) in this process (a study's child), after a warm-up; prints its JSON."""
    with tempfile.TemporaryDirectory() as folder:
        options, flags = _curve(Path(folder)) if args.curve else ({}, [])
        ingest("simed", 2000, "max", options, flags)  # numba's cache, the page cache
        print(json.dumps(ingest("simed", args.frames, args.rate, options, flags)))


def measure(tree: Path, frames: int, rate: str = "max", curve: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, str(HERE / "bench_ingest.py"), "--measure", "--frames", str(frames), "--rate", rate]
    done = subprocess.run(command + (["--curve"] if curve else []), env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export(revision: str, folder: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", revision, "simed_stream", "simulator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratio(runs: list[dict], others: list[dict], key: str) -> float:
    return round(statistics.median(run[key] / other[key] for run, other in zip(runs, others)), 3)


def _summary(runs: list[dict], ceilings: list[dict]) -> dict:
    return {"ingest_fps": round(_median(runs, "fps")), "ratio": _ratio(runs, ceilings, "fps"),
            "cpu_us_per_frame": round(_median(runs, "cpu_us_per_frame"), 1),
            "capture_MB": runs[-1]["capture_MB"], "dropped": sum(run["dropped"] for run in runs)}


def profile(runs: list[dict]) -> dict:
    """Median CPU µs per frame of each stage, ZeroMQ's I/O thread, and the rest of the process."""
    stages = {stage: statistics.median(run["stages_us_per_frame"][stage] for run in runs)
              for stage in runs[0]["stages_us_per_frame"]}
    total, zmq_io = _median(runs, "cpu_us_per_frame"), _median(runs, "zmq_io_us_per_frame")
    table = dict(stages, zmq_io_thread=zmq_io, other=total - sum(stages.values()) - zmq_io, total=total)
    print("CPU µs per frame, by stage (medians):", flush=True)
    for stage, value in table.items():
        print(f"  {stage:>14}: {value:7.1f}", flush=True)
    return {stage: round(value, 1) for stage, value in table.items()}


def run_all(args, ours: Path, baseline: Path | None) -> dict[str, list[dict]]:
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


def study(args) -> None:
    if args.measure:
        return measure_here(args)
    import simed_stream

    ours = Path(simed_stream.__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="simed-baseline-") as folder:
        baseline = _export(args.baseline, Path(folder)) if args.baseline else None
        runs = run_all(args, ours, baseline)
    ceilings = runs["raw"]
    result = {"source": "simed", "shape": list(SHAPE), "dtype": "uint16", "frames": args.frames,
              "repeats": args.repeats, "raw_fps": round(_median(ceilings, "fps")),
              "raw_cpu_us_per_frame": round(_median(ceilings, "cpu_us_per_frame"), 1), **_summary(runs["ingest"], ceilings)}
    if args.profile:
        result["profile_us_per_frame"] = profile(runs["ingest"])
    if baseline is not None:
        result["baseline"] = dict(_summary(runs["baseline"], ceilings), revision=args.baseline)
        if runs["baseline"][0]["stages_us_per_frame"]:
            result["baseline"]["profile_us_per_frame"] = profile(runs["baseline"])
        result["cpu_ratio"] = _ratio(runs["ingest"], runs["baseline"], "cpu_us_per_frame")
        result["fps_ratio"] = _ratio(runs["ingest"], runs["baseline"], "fps")
    if args.curve:
        result["curve"] = dict(_summary(runs["curve"], ceilings),
                               cpu_ratio=_ratio(runs["curve"], runs["ingest"], "cpu_us_per_frame"),
                               fps_ratio=_ratio(runs["curve"], runs["ingest"], "fps"))
    print(json.dumps(result))
