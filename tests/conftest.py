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

TINY_CLASSICAL = {"beta": 0.9, "er_iterations": 5, "hio_iterations": 20, "shrinkwrap_every": 20,
                  "shrinkwrap_sigma_px": [3.0, 1.5], "shrinkwrap_threshold": 0.04, "support_dilation_A": 6.0}
SCAN_SHAPE, FRAMES_PER_POSITION = (5, 5), 2


def write_tiny_model(folder: Path, geometry: dict, state: dict | None = None) -> Path:
    """model.pt + model_card.json as `export_model` writes them, for an untrained 2-level U-Net
    (or `state`): the chain's mechanics run fast; it proves nothing about phasing quality."""
    import hashlib
    import json

    import torch

    from simed_stream.phasing.network import UNetGenerator

    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        torch.manual_seed(0)
        state = {k: v.detach().cpu() for k, v in UNetGenerator(2, 1, width=8, depth=2).state_dict().items()}
    model = folder / "model.pt"
    torch.save(state, model)
    card = {
        "format": "simed-diffragan/1", "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "architecture": {"name": "UNetGenerator", "in_channels": ["image_lr", "classical"], "width": 8, "depth": 2},
        "target": "potential", "target_scale": 0.05, "consistency": True, "geometry": geometry,
        "classical": TINY_CLASSICAL, "training": {"proteins": [], "validation_proteins": [], "steps": 0},
    }
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    return model


@pytest.fixture(scope="session")
def dataset_geometry(physics_dataset):
    import h5py

    from simed_stream.phasing.classical import Geometry

    with h5py.File(physics_dataset, "r") as f:
        return Geometry.from_attrs(f.attrs)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, dataset_geometry) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), dict(dataset_geometry.__dict__))


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
