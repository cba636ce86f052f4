"""The live path end to end: fake detector → ZeroMQ (ipc) → Receiver → LivePipeline → stack/STAR.

Real sockets, real HDF5 captures, real torch; the model is an untrained tiny U-Net with a proper
card (phasing quality is not what these tests look at: where every byte and particle goes is)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (decodes the Blosc frames)
import numpy as np
import pytest
import starfile
import torch

from simed_stream.capture import RECEIVED, CaptureReader
from simed_stream.cli import main, replay_capture
from simed_stream.live import LivePipeline, LiveSettings
from simed_stream.pipeline import NO_OVERVIEW, ChainSettings
from simulator.detector import FakeDetector, FaultPlan, capture_series

SCAN_SHAPE, FRAMES_PER_POSITION = (5, 5), 2
FRAMES = SCAN_SHAPE[0] * SCAN_SHAPE[1] * FRAMES_PER_POSITION


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny_model(physics_dataset, tmp_path_factory) -> Path:
    """An untrained 2-level U-Net with a real card: phases, fast, proves nothing about quality."""
    from simed_stream.phasing.classical import Geometry
    from simed_stream.phasing.network import UNetGenerator

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = folder / "model.pt"
    torch.save(UNetGenerator(2, 1, width=8, depth=2).state_dict(), model)
    with h5py.File(physics_dataset, "r") as f:
        geometry = dataclasses.asdict(Geometry.from_attrs(f.attrs))
    card = {
        "format": "simed-diffragan/1", "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "architecture": {"name": "UNetGenerator", "in_channels": ["image_lr", "classical"], "width": 8, "depth": 2},
        "target": "potential", "target_scale": 0.05, "consistency": True, "geometry": geometry,
        "classical": {"beta": 0.9, "er_iterations": 5, "hio_iterations": 20, "shrinkwrap_every": 20,
                      "shrinkwrap_sigma_px": [3.0, 1.5], "shrinkwrap_threshold": 0.04, "support_dilation_A": 6.0},
        "training": {"proteins": [], "validation_proteins": [], "steps": 0},
    }
    (folder / "model_card.json").write_text(json.dumps(card))
    return model


@pytest.fixture(scope="module")
def scan(physics_dataset, tmp_path_factory) -> Path:
    """A 5×5 scan, 2 frames per position, 4 particles: a real capture with truth."""
    from simulator.scan import ScanSettings, simulate_scan

    out = tmp_path_factory.mktemp("scan") / "scan.h5"
    return simulate_scan(physics_dataset, out, ScanSettings(scan_shape=SCAN_SHAPE, particles=4,
                                                             frames_per_position=FRAMES_PER_POSITION, seed=1))


@pytest.fixture(scope="module")
def scan_frames(scan) -> np.ndarray:
    with h5py.File(scan, "r") as f:
        return f["frames"][:]


@pytest.fixture(scope="module")
def phaser(tiny_model):
    """One phaser for the tests that build a LivePipeline themselves (loading is the slow part)."""
    from simed_stream.phasing.inference import ParticlePhaser

    return ParticlePhaser(tiny_model, "cpu")


class Detector(threading.Thread):
    """A FakeDetector streaming `sources` in a thread; `error` keeps what went wrong."""

    def __init__(self, endpoint, sources, faults="", rate_fps="max"):
        super().__init__(name="test-detector", daemon=True)
        self.endpoint, self.sources, self.rate_fps = endpoint, sources, rate_fps
        self.faults = FaultPlan.parse(faults)
        self.report, self.error = None, None

    def run(self):
        try:
            with FakeDetector(self.endpoint, control_endpoint=None, rate_fps=self.rate_fps, faults=self.faults,
                              seed=1, peer_timeout_s=20) as detector:
                self.report = detector.run(self.sources)
        except Exception as error:  # noqa: BLE001  (the test asserts on it)
            self.error = error


def live_settings(tmp_path, **overrides) -> LiveSettings:
    values = dict(out_dir=tmp_path / "out", model=Path("unused"), data_endpoint=f"ipc://{tmp_path}/data.sock",
                  device="cpu", chain=ChainSettings(batch_size=2), batch_latency_s=0.2, overview_timeout_s=1.0,
                  series_timeout_s=3.0, status_interval_s=0.2)
    values.update(overrides)
    return LiveSettings(**values)


def run_live(tmp_path, phaser, sources, faults="", max_series=1, rate_fps="max", **overrides):
    settings = live_settings(tmp_path, **overrides)
    pipeline = LivePipeline(settings, phaser=phaser, max_series=max_series)
    detector = Detector(settings.data_endpoint, sources, faults, rate_fps)
    detector.start()
    results = run_with_deadline(pipeline, 60)
    detector.join(timeout=20)
    assert not detector.is_alive() and detector.error is None, detector.error
    return pipeline, results, detector


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


def captured(out: Path) -> list[Path]:
    return sorted((out / "captures").glob("*.h5"))


def check_capture_complete(path: Path, frames: np.ndarray | None = None) -> dict:
    with CaptureReader(path) as capture:
        assert capture.file.attrs["state"] == "closed"
        accounting = capture.accounting
        assert accounting["frames_expected"] == FRAMES
        assert accounting["received"] == FRAMES and accounting["missing"] == 0
        assert (capture.frame_status == RECEIVED).all()
        if frames is not None:
            np.testing.assert_array_equal(capture.file["frames"][:], frames)
    return accounting


def star_rows(series_dir: Path) -> int:
    blocks = starfile.read(series_dir / "particles.star", always_dict=True)
    return len(blocks["particles"])


# ------------------------------------------------------------------ tests

def test_replay_capture_end_to_end(scan, scan_frames, tiny_model, tmp_path):
    out = tmp_path / "out"
    pipeline = replay_capture(scan, out, ChainSettings(batch_size=2), tiny_model, "cpu", "max")
    assert len(pipeline.results) == 1 and pipeline.errors == []
    result = pipeline.results[0]
    assert result.status == "phased", result
    assert result.picks >= 1 and result.phased >= 1
    # the capture: every frame, bit for bit
    [capture] = captured(out)
    check_capture_complete(capture, scan_frames)
    # the stack: one STAR row per phased particle, one .mrcs per batch of two
    assert result.out_dir.parent == out
    assert star_rows(result.out_dir) == result.phased
    stacks = sorted(result.out_dir.glob("particles_*.mrcs"))
    assert len(stacks) == -(-result.phased // 2)  # full batches of 2; the last one may be single
    print("RESULT", result)
    saved = json.loads((result.out_dir / "result.json").read_text())
    assert saved["status"] == "phased" and saved["phased"] == result.phased
    assert saved["seconds"]["overview_to_last_particle"] > 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["ingest"]["frames_received"] == FRAMES
    assert status["ingest"]["frames_missing"] == 0 and status["ingest"]["frames_dropped_at_source"] == 0
    assert status["pipeline"]["particles_phased"] == result.phased
    assert status["pipeline"]["particles_found"] == result.picks
    assert status["pipeline"]["series_open"] == 0 and status["pipeline"]["series_done"] == 1
    assert status["series"][0]["status"] == "phased"
