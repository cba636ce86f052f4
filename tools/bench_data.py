"""Inputs shared by the chain benchmarks: a small simulated dataset of bundled ubiquitin (a
protein never used in training) and a synthetic scan built from it, cached under a folder."""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path


DEFAULT_WORK = Path(tempfile.gettempdir()) / "simed-bench"  # every benchmark's cache, shared


def free_endpoint() -> str:
    """A loopback ZeroMQ endpoint on a port free at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


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


def scan_arguments(parser: argparse.ArgumentParser, scan_shape: str, particles: int, frames_per_position: int) -> None:
    """The options both chain benchmarks share (what to simulate, which model, where)."""
    from simed_stream.chain_settings import DEFAULT_MODEL

    parser.add_argument("--scan", default=scan_shape, help=f"scan positions HxW (default {scan_shape})")
    parser.add_argument("--particles", type=int, default=particles)
    parser.add_argument("--frames-per-position", type=int, default=frames_per_position)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of the simulated inputs and outputs")


def capture_for(args: argparse.Namespace) -> Path:
    """The benchmark's capture: ubiquitin simulated once, placed in the asked scan (both cached)."""
    shape = tuple(int(v) for v in args.scan.split("x"))
    return scan(args.work, ubiquitin_dataset(args.work, args.particles), shape, args.particles, args.frames_per_position)
