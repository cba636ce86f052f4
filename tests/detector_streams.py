"""Shared by the detector tests: a scan whose every frame is unique (so a frame in the wrong place
shows), a receiver for a source, and the checks every adapter must pass."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the capture's frame filter)
import numpy as np

from simed_stream.detectors.series_source import SeriesSource
from simed_stream.detectors.vendor_sim import SimFaults
from simed_stream.ingest import Receiver, ReceiverSettings
from simed_stream.protocol import scan_order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_frames(n: int, shape=(32, 48), dtype="<u2", seed=0) -> np.ndarray:
    """Frames a beam's worth of counts apart: a bright 5×5 spot (so each position has a beam
    centre) on random counts, each frame different."""
    rng = np.random.default_rng(seed)
    top = 60000 if np.dtype(dtype).itemsize >= 2 else 250
    frames = rng.integers(0, top // 100, size=(n, *shape)).astype(dtype)
    frames[:, shape[0] // 2 - 2: shape[0] // 2 + 3, shape[1] // 2 - 2: shape[1] // 2 + 3] = top
    return frames


def scan_source(series_id: str, nav_shape=(3, 4), frames_per_position=2, pattern="raster", frames=None,
                batch=5) -> SeriesSource:
    """A series as a fake detector streams it: `frames` (default `unique_frames`) in acquisition order."""
    ny, nx = nav_shape
    n = ny * nx * frames_per_position
    frames = unique_frames(n) if frames is None else frames
    order = scan_order(nav_shape, pattern)
    fields = {"unique_id": uuid.uuid4().hex,
              "detector": {"model": "test", "sig_shape": list(frames.shape[1:]), "dtype": frames.dtype.str,
                           "bit_depth": 16, "pixel_pitch_um": 55.0},
              "scan": {"nav_shape": [ny, nx], "pattern": pattern, "frames_per_position": frames_per_position,
                       "dwell_s": 1e-3, "step_A": 20.0, "rotation_deg": 0.0, "frames_expected": n},
              "optics": {}, "microscope": {}, "trigger_mode": "internal", "encoding": "raw", "user_data": {}}

    def messages():
        yield "series_start", None, fields
        for first in range(0, n, batch):
            ids = np.arange(first, min(first + batch, n), dtype=np.uint64)
            yield "frames", None, (ids, order[ids.astype(np.int64) // frames_per_position],
                                   np.zeros(len(ids), np.uint64), frames[first:first + batch])
        yield "series_end", None, None

    return SeriesSource(series_id, fields, None, messages(), 1e-3)


def receiver_settings(tmp_path: Path, source: str, endpoint: str, scan: dict, **more) -> ReceiverSettings:
    """Series back to back, each waiting 0.2 s for an overview that never comes: room for 8 open.
    A vendor's stream has no keys: a real detector on another machine needs `insecure` (said here)."""
    insecure = {"security": {"insecure": True}} if os.environ.get(f"SIMED_{source.upper()}_ENDPOINT") else {}
    return ReceiverSettings(capture_dir=tmp_path / "captures", source=source, data_endpoint=endpoint, scan=scan,
                            **{"overview_grace_s": 0.2, "max_open_series": 8, **insecure, **more})


def run_receiver(settings: ReceiverSettings, send, series: int = 1, timeout_s: float = 60.0):
    """Start a receiver, run `send()` in a thread, wait for `series` closed series; returns them."""
    failure = []

    def sender():
        try:
            send()
        except Exception as error:  # reported below
            failure.append(error)

    with Receiver(settings) as receiver:
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        summaries = receiver.wait_for_series(series, timeout_s)
        thread.join(timeout=30)
    assert not failure, failure
    return summaries


def capture(summary):
    """(frames, frame_status, scan_yx, series_start header, accounting) of a closed series' capture."""
    with h5py.File(summary.path, "r") as f:
        return (f["frames"][:], f["frame_status"][:], f["scan_yx"][:], json.loads(f.attrs["series_start"]),
                json.loads(f.attrs["accounting"]))


def assert_accounted(accounting: dict) -> None:
    """Every expected frame is exactly one of received, rejected, dropped at source, missing."""
    a = accounting
    assert a["received"] + a["rejected"] + a["dropped_at_source"] + a["missing"] == a["frames_expected"], a
    assert min(a["received"], a["rejected"], a["missing"]) >= 0, a


#: one series each, over a 3×4 scan of 2 frames a position (24): frames 3 and 10 truncated and
#: garbage before frame 5; stopped after 15 frames; 4 frames more than the scan; clean; gone after 9
FAULT_PLANS = [SimFaults(truncate=frozenset({3, 10}), garbage=frozenset({5})), SimFaults(stop_after=15),
               SimFaults(extra_frames=4), SimFaults(), SimFaults(stop_after=9, disconnect=True)]


def check_fault_series(summaries, short_status: str, gone_status: str) -> None:
    """What `FAULT_PLANS` must come to, whatever the detector: every frame accounted for."""
    assert len(summaries) == len(FAULT_PLANS)
    for summary in summaries:
        assert_accounted(summary.accounting)
    truncated, short, long, clean, gone = (s.accounting for s in summaries)
    assert truncated["rejected"] == 2 and truncated["received"] == 22 and truncated["rejected_messages"] >= 3
    assert short["received"] == 15 and short["missing"] == 9 and summaries[1].end_status == short_status
    assert long["received"] == 24 and long["extra"] == 4
    assert clean["received"] == 24 and clean["missing"] == 0 and clean["rejected_messages"] == 0
    assert gone["received"] == 9 and gone["missing"] == 15 and summaries[4].end_status == gone_status


def run_fault_plans(sim, settings: ReceiverSettings, pause_s=lambda number: 0.0) -> list:
    """`FAULT_PLANS` through one simulator (one connection), series after series; closes it."""
    def send():
        for number, faults in enumerate(FAULT_PLANS):
            sim.faults = faults
            sim.stream(scan_source(f"s{number}", (3, 4), 2))
            time.sleep(pause_s(number))

    try:
        return run_receiver(settings, send, series=len(FAULT_PLANS))
    finally:
        sim.close()

