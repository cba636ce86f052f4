"""Benchmark phasing on the `cpu` preset geometry; the last line printed is one JSON object.

- `engine_vs_numpy_ratio`: the batched torch engine against the old numpy HIO loop
  (`classical.phase`) at the same iterations × starts, both given the same cores (the numpy loop
  in one process per core, the engine with one torch thread per core): start-iterations per second.
- `default_vs_old_ratio`: particles per second of the default phaser (its card: engine, and the
  network if it has one) against the old default (classical 500 HIO + 100 ER, then a U-Net of
  the old architecture — speed does not depend on the weights), both on the same cores.
- with CUDA: the default phaser's particles per second on the GPU (batches of 64).

Particles: 12 simulated orientations of bundled ubiquitin (`cpu` preset), cached in --work.

    python tools/bench_phasing.py [--phaser models/phaser-cpu] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from simed_stream.phasing import DEFAULT_PHASER
from simed_stream.phasing.classical import Geometry, HIOSettings, phase
from simed_stream.phasing.engine import EngineSettings, PhaseRetrievalEngine
from simed_stream.phasing.inference import Phaser, read_card
from simed_stream.phasing.network import UNetGenerator, data_consistency

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_data beside this file
from bench_data import DEFAULT_WORK, ubiquitin_dataset  # noqa: E402


def ubiquitin_particles(work: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Simulated ubiquitin patterns and low-res images (cached under `work`): the engine's cost
    depends on content (a particle whose solutions disagree is searched again), so it is timed on
    the kind of particle it phases, a protein none of its settings were chosen on."""
    import h5py

    path = ubiquitin_dataset(work, 12)
    with h5py.File(path, "r") as f:
        return [(f["diffraction"][i], f["image_lr"][i]) for i in range(count)]


def _numpy_phase(job) -> float:
    pattern, image_lr, geometry, settings = job
    started = time.perf_counter()
    phase(pattern, image_lr, geometry, settings)
    return time.perf_counter() - started


def numpy_rate(particles, geometry, settings: HIOSettings, cores: int) -> float:
    """Particles per second of the numpy loop, one process per core."""
    jobs = [(p, l, geometry, settings) for p, l in particles]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_numpy_phase, jobs[:cores]))  # start-up and imports out of the timing
        started = time.perf_counter()
        list(pool.map(_numpy_phase, jobs))
    return len(jobs) / (time.perf_counter() - started)


def old_default_rate(particles, geometry: Geometry, cores: int) -> float:
    """Classical 500 + 100 per particle in one process per core, then the old U-Net in a batch."""
    classical = numpy_rate(particles, geometry, HIOSettings(hio_iterations=500, er_iterations=100), cores)
    torch.set_num_threads(cores)
    generator = UNetGenerator(2, 1, 32, 4).eval()
    n = geometry.grid_px
    x = torch.randn(len(particles), 2, geometry.image_size_px, geometry.image_size_px)
    amplitude = torch.rand(len(particles), n, n // 2 + 1)
    known = torch.ones(len(particles), n, n // 2 + 1, dtype=torch.bool)
    with torch.no_grad():
        generator(x[:1])
        started = time.perf_counter()
        data_consistency(generator(x), amplitude, known, n)
    network_seconds = (time.perf_counter() - started) / len(particles)
    return 1.0 / (1.0 / classical + network_seconds)


def engine_rate(particles, geometry: Geometry, settings: EngineSettings, cores: int, device="cpu") -> float:
    torch.set_num_threads(cores)
    engine = PhaseRetrievalEngine(geometry, settings, device)
    patterns, images = np.stack([p for p, _ in particles]), np.stack([l for _, l in particles])
    engine(patterns[:1], images[:1])
    started = time.perf_counter()
    engine(patterns, images)
    return len(particles) / (time.perf_counter() - started)


def phaser_rate(phaser: Phaser, particles, batch: int) -> float:
    patterns, images = np.stack([p for p, _ in particles]), np.stack([l for _, l in particles])
    phaser(patterns[:1], images[:1])
    if phaser.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for first in range(0, len(particles), batch):
        phaser(patterns[first : first + batch], images[first : first + batch])
    if phaser.device.type == "cuda":
        torch.cuda.synchronize()
    return len(particles) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phaser", type=Path, default=DEFAULT_PHASER)
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--particles", type=int, default=8, help="at most 12")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="cache of the simulated particles (shared with the other benchmarks)")
    args = parser.parse_args()
    if not 1 <= args.particles <= 12:
        parser.error(f"--particles {args.particles}: the cached ubiquitin dataset has 12 (1..12)")
    card = read_card(args.phaser)
    geometry = Geometry(**card["geometry"])
    particles = ubiquitin_particles(args.work, args.particles)
    result = {"phaser": str(args.phaser), "cores": args.cores, "particles": args.particles,
              "machine": f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")}

    # the same work both ways: 8 starts × (300 HIO + 50 ER) on the full grid
    starts, hio, er = 8, 300, 50
    numpy_start_its = numpy_rate(particles[: args.cores * 2], geometry, HIOSettings(hio_iterations=hio, er_iterations=er),
                                 args.cores) * (hio + er)
    same = EngineSettings(starts=starts, schedule=((1, hio),), er_iterations=er, keep=starts)
    engine_start_its = engine_rate(particles, geometry, same, args.cores) * starts * (hio + er)
    result["numpy_start_iterations_per_s"] = round(numpy_start_its, 1)
    result["engine_start_iterations_per_s"] = round(engine_start_its, 1)
    result["engine_vs_numpy_ratio"] = round(engine_start_its / numpy_start_its, 2)
    print(f"engine {engine_start_its:.0f} vs numpy {numpy_start_its:.0f} start-iterations/s "
          f"({result['engine_vs_numpy_ratio']}x)", flush=True)

    old = old_default_rate(particles[: args.cores * 2], geometry, args.cores)
    torch.set_num_threads(args.cores)
    default = phaser_rate(Phaser(args.phaser, "cpu"), particles, batch=8)
    result["old_default_particles_per_s"] = round(old, 3)
    result["default_particles_per_s"] = round(default, 3)
    result["default_vs_old_ratio"] = round(default / old, 2)
    print(f"default phaser {default:.2f} vs old default {old:.2f} particles/s ({result['default_vs_old_ratio']}x)",
          flush=True)
    if torch.cuda.is_available():
        phaser = Phaser(args.phaser, "cuda")
        gpu_particles = (particles * (256 // len(particles) + 1))[:256]
        result["default_cuda_particles_per_s"] = round(phaser_rate(phaser, gpu_particles, batch=64), 1)
        print(f"default phaser on CUDA: {result['default_cuda_particles_per_s']} particles/s", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
