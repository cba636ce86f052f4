"""The live path when a second series starts before the first has ended.

The stream is built by hand on a raw PUSH socket (the fake detector sends one series after the
other): series A starts, half of its frames arrive — the last of them half a scan position —,
then series B from start to end, then the rest of A, its overview and its end. Each series
must come out as if it had been alone: its own capture, complete; its own folder; its own
particles, cut from its own frames."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (decodes the Blosc frames)
import numpy as np
import pytest
import starfile
import zmq

from simed_stream.capture import RECEIVED, CaptureReader
from simed_stream.chain import SeriesChain
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import LiveSettings
from simed_stream.particles import crop_overview, cut_pattern
from simed_stream.protocol import (
    encode_frames,
    encode_overview,
    encode_series_end,
    encode_series_start,
)
from simed_stream.capture_replay import capture_series

from conftest import run_with_deadline

SCAN_SHAPE, FRAMES_PER_POSITION = (5, 5), 2
FRAMES = SCAN_SHAPE[0] * SCAN_SHAPE[1] * FRAMES_PER_POSITION
FRAMES_PER_MESSAGE = 5  # odd: A's first half ends in the middle of a scan position


# ------------------------------------------------------------------ fixtures (as in test_live.py)

@pytest.fixture(scope="module")
def phaser(tiny_phaser):
    from simed_stream.phasing.inference import Phaser

    return Phaser(tiny_phaser, "cpu")


# ------------------------------------------------------------------ the interleaved stream

def series_messages(capture: Path) -> dict:
    """A capture's series as the pieces of a stream: start fields and mask, frames in small
    messages (in acquisition order), the overview. Payloads only: headers are made fresh."""
    source = capture_series(capture)
    frames, overview = [], None
    for htype, _recorded, payload in source.messages:
        if htype == "frames":
            ids, scan_yx, stamps, pixels = payload
            for first in range(0, len(ids), FRAMES_PER_MESSAGE):
                part = slice(first, first + FRAMES_PER_MESSAGE)
                frames.append((ids[part], scan_yx[part], stamps[part], pixels[part]))
        elif htype == "overview_image":
            overview = payload
    assert overview is not None and sum(len(f[0]) for f in frames) == FRAMES
    return {"series_id": source.series_id, "fields": source.start_fields, "mask": source.pixel_mask,
            "frames": frames, "overview": overview}


def interleaved(a: dict, b: dict) -> list[list]:
    """start A, first half of A's frames, all of B (start, frames, overview, end), rest of A,
    A's overview, end A — each with the next msg_seq, as one detector connection would number them."""
    seq = iter(range(10**6))

    def start(s):
        return encode_series_start(s["series_id"], next(seq), s["fields"], s["mask"])

    def frames(s, batch):
        return encode_frames(s["series_id"], next(seq), *batch)

    def overview(s):
        o = s["overview"]
        return encode_overview(s["series_id"], next(seq), o["overview_id"], o["image"], o["pixel_size_A"],
                               o["affine"], o["acquired"])

    def end(s):
        return encode_series_end(s["series_id"], next(seq), "complete", FRAMES, 0)

    half = len(a["frames"]) // 2
    return [start(a), *(frames(a, batch) for batch in a["frames"][:half]),
            start(b), *(frames(b, batch) for batch in b["frames"]), overview(b), end(b),
            *(frames(a, batch) for batch in a["frames"][half:]), overview(a), end(a)]


class RawDetector(threading.Thread):
    """Binds PUSH on the endpoint (receivers connect, as to a real detector) and sends `messages`."""

    def __init__(self, endpoint: str, messages: list[list]):
        super().__init__(name="test-raw-detector", daemon=True)
        self.endpoint, self.messages = endpoint, messages
        self.sent, self.error = 0, None

    def run(self):
        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        try:
            socket.setsockopt(zmq.SNDTIMEO, 20_000)  # blocks until the receiver has connected
            socket.setsockopt(zmq.LINGER, 20_000)  # deliver everything queued before closing
            socket.bind(self.endpoint)
            for parts in self.messages:
                socket.send_multipart(parts)
                self.sent += 1
        except Exception as error:  # noqa: BLE001  (the test asserts on it)
            self.error = error
        finally:
            socket.close()
            context.term()


def original_position_sums(capture: Path) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Each scan position's frames summed (float32, in frame order, as the receiver does), from the capture."""
    nx = SCAN_SHAPE[1]
    with h5py.File(capture, "r") as f:
        frames, scan_yx = f["frames"][:], f["scan_yx"][:]
        mask = f["pixel_mask"][:].astype(bool) if "pixel_mask" in f else None
    sums: dict[int, np.ndarray] = {}
    for frame, (y, x) in zip(frames, scan_yx):
        position = int(y) * nx + int(x)
        sums[position] = sums[position] + frame if position in sums else np.zeros_like(frame) + frame
    return sums, mask


# ------------------------------------------------------------------ the test

def test_a_second_series_starting_before_the_first_ends(scan, scan_b, phaser, tmp_path, monkeypatch):
    a, b = series_messages(scan), series_messages(scan_b)
    assert a["series_id"] != b["series_id"]
    messages = interleaved(a, b)

    # which data each series' chain phased: (scan position, beam centre, pattern, low-res crop)
    phased: dict[str, list] = {a["series_id"]: [], b["series_id"]: []}
    original_phase = SeriesChain.phase

    def recording_phase(self, batch):
        phased[self.result.series_id].extend(
            (p.scan_yx, p.beam_centre_yx, p.diffraction.copy(), p.image_lr.copy()) for p in batch)
        return original_phase(self, batch)

    monkeypatch.setattr(SeriesChain, "phase", recording_phase)

    endpoint = f"ipc://{tmp_path}/data.sock"
    settings = LiveSettings(out=tmp_path / "out", model=Path("unused"), data_endpoint=endpoint, device="cpu",
                            batch_size=2, batch_latency_s=0.2, overview_timeout_s=3.0, series_timeout_s=15.0,
                            status_interval_s=0.2, max_series=2)
    pipeline = LivePipeline(settings, phaser=phaser)
    detector = RawDetector(endpoint, messages)
    detector.start()
    results = run_with_deadline(pipeline, 60)
    detector.join(timeout=30)
    assert not detector.is_alive() and detector.error is None, detector.error
    assert detector.sent == len(messages)

    # B started second but ended first
    assert [r.series_id for r in results] == [b["series_id"], a["series_id"]], results
    assert pipeline.errors == []
    for r in results:
        assert r.status == "phased" and r.phased > 0, r
    assert len({r.out_dir for r in results}) == 2
    out = tmp_path / "out"
    for r in results:
        assert r.out_dir == out / r.series_id
        star = starfile.read(r.out_dir / "particles.star", always_dict=True)["particles"]
        assert len(star) == r.phased
        assert set(star["rlnMicrographName"].astype(str)) == {r.series_id}
        assert sorted(r.out_dir.glob("particles_*.mrcs"))

    # both captures complete, every frame bit for bit, nothing rejected or out of sequence
    for s, original in ((a, scan), (b, scan_b)):
        with CaptureReader(out / "captures" / f"{s['series_id']}.h5") as capture:
            assert capture.file.attrs["state"] == "closed" and capture.file.attrs["end_status"] == "complete"
            accounting = capture.accounting
            assert accounting["frames_expected"] == accounting["received"] == FRAMES
            assert accounting["missing"] == 0 and accounting["rejected"] == 0
            assert (capture.frame_status == RECEIVED).all()
            with h5py.File(original, "r") as f:
                np.testing.assert_array_equal(capture.file["frames"][:], f["frames"][:])
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["ingest"]["frames_received"] == 2 * FRAMES
    assert status["ingest"]["rejected_messages"] == status["ingest"]["msg_seq_gaps"] == 0
    assert status["pipeline"]["series_open"] == 0 and status["pipeline"]["cached_bytes"] == 0
    assert status["pipeline"]["particles_phased"] == sum(r.phased for r in results)

    # each series' particles were cut from its own frames and its own overview, not the other's
    sums = {s["series_id"]: original_position_sums(path) for s, path in ((a, scan), (b, scan_b))}
    overviews = {s["series_id"]: s["overview"]["image"] for s in (a, b)}
    for r in results:
        other = a["series_id"] if r.series_id == b["series_id"] else b["series_id"]
        assert len(phased[r.series_id]) == r.phased
        own_sums, mask = sums[r.series_id]
        for (y, x), centre, pattern, image_lr in phased[r.series_id]:
            position = y * SCAN_SHAPE[1] + x
            side = pattern.shape[0]
            np.testing.assert_array_equal(pattern, cut_pattern(own_sums[position], centre, side, mask))
            other_sums, other_mask = sums[other]
            assert not np.array_equal(pattern, cut_pattern(other_sums[position], centre, side, other_mask))
            own_crops = [crop_overview(overviews[r.series_id], yx, image_lr.shape[0]) for yx in
                         _pick_centres(r.out_dir, y, x)]
            assert any(c is not None and np.array_equal(c, image_lr) for c in own_crops)


def _pick_centres(series_dir: Path, y: int, x: int) -> list[tuple[float, float]]:
    """Overview (row, col) of the STAR rows at scan position (y, x)."""
    star = starfile.read(series_dir / "particles.star", always_dict=True)["particles"]
    rows = star[(star["simedScanY"] == y) & (star["simedScanX"] == x)]
    return list(zip(rows["rlnCoordinateY"].astype(float), rows["rlnCoordinateX"].astype(float)))
