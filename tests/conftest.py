import os
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
