import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simulator import BUNDLED_DATA

UBIQUITIN = BUNDLED_DATA / "1ubq.pdb"
BPTI = BUNDLED_DATA / "1bpi.pdb"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Prepared-structure cache in a temporary folder, shared by the whole session."""
    os.environ["SIMED_CACHE_DIR"] = str(tmp_path_factory.mktemp("simed-cache"))


def small_config(**overrides):
    """A cheap geometry for tests of mechanics (not of physics presets): 50 Å box, 144 points."""
    from simulator.config import load_simulation_config

    data = dict(box_A=50.0, gpts=144, image_field_A=50.0, image_size_px=72)
    data.update(overrides)
    return load_simulation_config(None, None, data)


@pytest.fixture(scope="session")
def physics_dataset(tmp_path_factory) -> Path:
    """The real `cpu` preset on bundled ubiquitin, 6 orientations: what the physics tests inspect."""
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset

    out = tmp_path_factory.mktemp("physics") / "ubq-cpu.h5"
    request = DatasetRequest([UBIQUITIN], 6, 3, out, load_simulation_config("cpu"), workers=1, progress=False)
    return simulate_dataset(request)


def radial_frequency(shape, pixel_A):
    ky = np.fft.fftfreq(shape[0], d=pixel_A)
    kx = np.fft.fftfreq(shape[1], d=pixel_A)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


# ---------------------------------------------------------------- the particle chain's test inputs

#: an engine that runs in a blink: the chain's mechanics, not phasing quality
TINY_ENGINE = {"starts": 2, "schedule": [[2, 20], [1, 10]], "er_iterations": 5, "keep": 2, "support_dilation_A": 14.0}
SCAN_SHAPE, FRAMES_PER_POSITION = (5, 5), 2


def write_tiny_phaser(folder: Path, geometry: dict, network: bool = True, state: dict | None = None,
                      **engine) -> Path:
    """A phaser folder as `simed train` writes it (model_card.json, and model.pt for an untrained
    2-level refiner, or `state`): fast, and it proves nothing about phasing quality."""
    import hashlib
    import json

    import torch

    from simed_stream.phasing.engine import EngineSettings
    from simed_stream.phasing.network import ResidualRefiner
    from simed_stream.phasing.preprocess import INPUT_CHANNELS

    folder.mkdir(parents=True, exist_ok=True)
    card = {"format": "simed-phaser/2", "preset": "test", "geometry": geometry,
            "engine": EngineSettings.from_json({**TINY_ENGINE, **engine}).to_json(), "network": None,
            "training": {"proteins": [], "validation_proteins": []}}
    if network:
        if state is None:
            torch.manual_seed(0)
            state = {k: v.detach().cpu() for k, v in ResidualRefiner(len(INPUT_CHANNELS), 8, 2).state_dict().items()}
        torch.save(state, folder / "model.pt")
        card["network"] = {"file": "model.pt", "sha256": hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest(),
                           "architecture": {"name": "ResidualRefiner", "width": 8, "depth": 2},
                           "inputs": list(INPUT_CHANNELS), "target": "potential", "target_scale": 0.05,
                           "consistency": True}
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    return folder


@pytest.fixture(scope="session")
def dataset_geometry(physics_dataset):
    import h5py

    from simed_stream.phasing.classical import Geometry

    with h5py.File(physics_dataset, "r") as f:
        return Geometry.from_attrs(f.attrs)


@pytest.fixture(scope="session")
def tiny_phaser(tmp_path_factory, dataset_geometry) -> Path:
    return write_tiny_phaser(tmp_path_factory.mktemp("tiny-phaser"), dict(dataset_geometry.__dict__))


def simulated_scan(physics_dataset, folder: Path, name: str, particles: int, seed: int) -> Path:
    """A 5×5 scan, 2 frames per position: a real capture (through detector and receiver) with truth."""
    from simulator.scan import ScanSettings, simulate_scan

    return simulate_scan(physics_dataset, folder / f"{name}.h5", ScanSettings(
        scan_shape=SCAN_SHAPE, particles=particles, frames_per_position=FRAMES_PER_POSITION, seed=seed))


@pytest.fixture(scope="session")
def scan(physics_dataset, tmp_path_factory) -> Path:
    """4 particles, series id "scan"."""
    return simulated_scan(physics_dataset, tmp_path_factory.mktemp("scan"), "scan", 4, 1)


@pytest.fixture(scope="session")
def scan_b(physics_dataset, tmp_path_factory) -> Path:
    """3 other particles, series id "scan-b"."""
    return simulated_scan(physics_dataset, tmp_path_factory.mktemp("scan-b"), "scan-b", 3, 2)


def run_with_deadline(pipeline, seconds):
    """pipeline.run(), stopped after `seconds` so a hang fails instead of blocking the suite."""
    timer = threading.Timer(seconds, pipeline.stop)
    timer.start()
    started = time.monotonic()
    try:
        results = pipeline.run()
    finally:
        timer.cancel()
    assert time.monotonic() - started < seconds, "the pipeline did not finish by itself"
    return results
