"""Inputs shared by the chain benchmarks: a small simulated dataset of bundled ubiquitin (a
protein never used in training) and a synthetic scan built from it, cached under a folder."""

from __future__ import annotations

from pathlib import Path


def ubiquitin_dataset(folder: Path, orientations: int, workers: int = 2) -> Path:
    from simulator import BUNDLED_DATA
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ubiquitin-cpu-{orientations}.h5"
    request = DatasetRequest([BUNDLED_DATA / "1ubq.pdb"], orientations, 7, path, load_simulation_config("cpu"),
                             workers, progress=False)
    return simulate_dataset(request)  # resumes (here: finds it done) when it exists


def scan(folder: Path, dataset: Path, shape: tuple[int, int], particles: int, frames_per_position: int) -> Path:
    from simulator.scan import ScanSettings, simulate_scan

    path = folder / f"scan-{shape[0]}x{shape[1]}-{particles}p-{frames_per_position}f.h5"
    if not path.exists():
        simulate_scan(dataset, path, ScanSettings(scan_shape=shape, particles=particles,
                                                  frames_per_position=frames_per_position, seed=3))
    return path
