"""Benchmark the live pipeline: a synthetic scan streamed by the fake detector at 2 000
frames/s through `simed run`'s code path. Measures latency from the overview's arrival to the
last particle in the stack, the phasing time inside it (the goal is latency ≤ 2 s + phasing
time), particles/s, ingest frames/s and drops. Last line: JSON.

    python tools/bench_pipeline.py [--scan 24x24] [--particles 12] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import capture_for, scan_arguments  # noqa: E402

from simed_stream.cli.replay import replay_capture  # noqa: E402
from simed_stream.live.settings import LiveSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scan_arguments(parser, "24x24", 12, 4)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--phasing-workers", type=int, default=0, help="classical phasing fan-out (ZeroMQ)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.scan.split("x"))
    capture = capture_for(args)
    out = args.work / "pipeline-out"
    shutil.rmtree(out, ignore_errors=True)
    rates = []
    started = time.perf_counter()
    settings = LiveSettings(out=out, model=args.model, phasing_workers=args.phasing_workers, overview_timeout_s=5.0)
    pipeline = replay_capture(capture, settings, args.rate,
                              on_status=lambda status: rates.append(status["ingest"]["frames_per_s"]))
    total = time.perf_counter() - started
    result = pipeline.results[0]
    status = json.loads((out / "status.json").read_text())
    frames = status["ingest"]["frames_received"]
    latency = result.seconds.get("overview_to_last_particle")
    phasing = result.seconds.get("engine", 0.0) + result.seconds.get("network", 0.0)
    dropped = status["ingest"]["frames_dropped_at_source"] + status["ingest"]["frames_missing"]
    frames_expected = shape[0] * shape[1] * args.frames_per_position
    print(f"{frames}/{frames_expected} frames at {args.rate:g} frames/s offered, peak ingest "
          f"{max(rates or [0]):.0f} frames/s, dropped {dropped}")
    print(f"{result.phased} of {result.picks} picks phased; overview -> last particle {latency:.2f} s, of which "
          f"phasing {phasing:.2f} s (goal: ≤ 2 s + phasing)")
    print(json.dumps({"phasing_workers": args.phasing_workers, "frames": frames, "frames_expected": frames_expected, "dropped": dropped,
                      "offered_frames_per_s": args.rate, "ingest_peak_frames_per_s": max(rates or [0]),
                      "particles": result.phased, "latency_s": round(latency, 3) if latency else None,
                      "phasing_s": round(phasing, 3), "latency_beyond_phasing_s": round(latency - phasing, 3)
                      if latency else None, "goal_met": bool(latency is not None and latency <= 2 + phasing
                                                          and dropped == 0),
                      "particles_per_s": round(result.phased / latency, 3) if latency else None,
                      "seconds_total": round(total, 2), "stage_seconds": {k: round(v, 3) for k, v in
                                                                           result.seconds.items()}}))


if __name__ == "__main__":
    main()
