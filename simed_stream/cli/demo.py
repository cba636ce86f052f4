"""`simed demo`: the whole live chain on bundled data — abTEM simulation, a synthetic scan, the
fake detector, the live pipeline with the shipped phaser — scored against the simulation's truth."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from simed_stream.chain_settings import DEFAULT_MODEL
from simed_stream.cli.common import print_status
from simed_stream.live.settings import LiveSettings, WebOptions

SCAN_SHAPE = (10, 10)
REPLAY_FRAMES_PER_S = 2000.0


class DemoCommand(WebOptions):
    out: Path = Field(Path("simed-demo"), description="output folder")
    particles: int = Field(8, ge=1, description="orientations of ubiquitin, one particle each")
    workers: int = Field(2, ge=1, description="simulation processes")
    model: Path = Field(DEFAULT_MODEL, description="phaser folder or card (default: the shipped phaser-cpu)")


def demo(command: DemoCommand) -> int:
    """Simulate ubiquitin (bundled, never used in training) in a few orientations, place the
    particles in a synthetic 10x10 scan, stream it from the fake detector through the live
    pipeline with the shipped phaser, and write the stack, STAR, status.json and report."""
    from simed_stream.capture import CaptureReader
    from simed_stream.cli.live import run_live
    from simed_stream.cli.replay import replay_capture

    started = time.monotonic()
    from simed_stream.phasing.inference import read_card

    read_card(command.model)  # a missing or foreign phaser fails now, before minutes of simulation
    scan = _simulate(command)
    run_dir = command.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"demo: 3/3 streaming it from the fake detector ({REPLAY_FRAMES_PER_S:.0f} frames/s) through the live "
          f"pipeline -> {run_dir}", flush=True)
    with CaptureReader(scan) as reader:
        truth = reader.truth()  # the live stream carries no truth: the demo knows it
    settings = LiveSettings(out=run_dir, model=command.model, overview_timeout_s=5.0, **command.web_options())
    pipeline = replay_capture(scan, settings, REPLAY_FRAMES_PER_S, None,
                              print_status, run_live, truth_of=lambda _series_id: truth)
    for r in pipeline.results:
        print(f"demo: {r.status}: {r.phased} of {r.picks} picked particles phased into {r.out_dir}/particles.star")
        if r.pick_score:
            frc05 = r.frc05_A_vs_truth
            print(f"demo: against the simulation's truth: picking F1 {r.pick_score['f1']:.2f} "
                  f"(precision {r.pick_score['precision']:.2f}, recall {r.pick_score['recall']:.2f})"
                  + (f"; phased particles FRC0.5 mean {frc05['mean']:.2f} Å, median {frc05['median']:.2f} Å"
                     if frc05 else ""))
        print(f"demo: report {r.out_dir}/report.png, status {run_dir}/status.json")
    print(f"demo: done in {time.monotonic() - started:.0f} s")
    return 0 if pipeline.results and all(r.status == "phased" for r in pipeline.results) else 1


def _simulate(command: DemoCommand) -> Path:
    """Ubiquitin in `particles` orientations (abTEM), placed in a synthetic scan; returns the capture."""
    from simulator import BUNDLED_DATA
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset
    from simulator.scan import ScanSettings, simulate_scan

    data = command.out / "inputs"
    data.mkdir(parents=True, exist_ok=True)
    dataset = data / "ubiquitin-cpu.h5"
    print(f"demo: 1/3 simulating {command.particles} orientations of ubiquitin with abTEM -> {dataset}", flush=True)
    simulate_dataset(DatasetRequest([BUNDLED_DATA / "1ubq.pdb"], command.particles, 1, dataset,
                                    load_simulation_config("cpu"), command.workers, progress=False))
    scan = data / f"scan-{time.strftime('%Y%m%d-%H%M%S')}.h5"
    print(f"demo: 2/3 placing them in a {SCAN_SHAPE[0]}x{SCAN_SHAPE[1]} scan with an overview image -> {scan}",
          flush=True)
    simulate_scan(dataset, scan, ScanSettings(scan_shape=SCAN_SHAPE, particles=command.particles, seed=1))
    return scan
