"""Benchmark `simed reprocess`: particles/s and seconds per stage on a synthetic scan of
ubiquitin (never in training) with the shipped model. The baseline measured in the same run is
the chain's irreducible cost — classical phasing plus the network — so `overhead_ratio` says
what picking, matching, centring, writing and reporting add. Last line: JSON.

    python tools/bench_reprocess.py [--particles 12] [--scan 12x12] [--work /tmp/simed-bench]
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

from simed_stream.chain_settings import ChainSettings  # noqa: E402
from simed_stream.reprocess import reprocess_captures  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scan_arguments(parser, "12x12", 12, 2)
    args = parser.parse_args()
    capture = capture_for(args)
    out = args.work / "reprocess-out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = reprocess_captures([capture], out, ChainSettings(model=args.model))[0]
    total = time.perf_counter() - started
    seconds = {k: round(v, 3) for k, v in result.seconds.items()}
    core = result.seconds["engine"] + result.seconds["network"]
    print(f"{result.phased} of {result.picks} picks phased in {total:.1f} s ({result.phased / total:.2f} particles/s)")
    for stage, value in seconds.items():
        print(f"  {stage:>10}: {value:7.3f} s")
    print(f"picking vs truth: {result.pick_score}; FRC0.5 vs truth: {result.frc05_A_vs_truth}")
    print(json.dumps({"particles": result.phased, "picks": result.picks, "seconds_total": round(total, 3),
                      "particles_per_s": round(result.phased / total, 3), "seconds": seconds,
                      "baseline_classical_plus_network_s": round(core, 3),
                      "overhead_ratio": round(total / core, 3) if core else None,
                      "pick_f1": result.pick_score["f1"] if result.pick_score else None,
                      "frc05_A_vs_truth_mean": (result.frc05_A_vs_truth or {}).get("mean")}))


if __name__ == "__main__":
    main()
