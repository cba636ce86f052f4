"""The capture directory runs out of space mid-series, on a real small file system: a tmpfs
limited to 8 MiB, mounted for the test (root with CAP_SYS_ADMIN, as CI runs; elsewhere the test
skips and says why). The receiver must say so (log, status), keep accounting, leave the capture
readable with every frame it says it holds intact, and capture the next series once there is
space again."""

import json
import logging
import subprocess
import time

import numpy as np
import pytest

from simed_stream.capture import RECEIVED, CaptureReader
from simed_stream.ingest import Receiver, ReceiverSettings
from simed_stream.protocol import encode_frames, encode_series_end, encode_series_start

from test_ingest import START, RawSender, free_endpoint

SIDE, NAV, PER_POSITION, BATCH = 64, (16, 16), 4, 16
FRAMES = NAV[0] * NAV[1] * PER_POSITION  # 1024 incompressible frames of 8 KiB and their sums: more than the disk


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here: a size-limited file system cannot be made")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def start_fields():
    detector = START["detector"] | {"sig_shape": [SIDE, SIDE]}
    scan = START["scan"] | {"nav_shape": list(NAV), "frames_per_position": PER_POSITION, "frames_expected": FRAMES}
    return START | {"detector": detector, "scan": scan}


def send_series(sender, series_id, pixels, pause_s=0.0):
    sender.send(encode_series_start(series_id, 0, start_fields()))
    for seq, first in enumerate(range(0, FRAMES, BATCH), start=1):
        ids = np.arange(first, first + BATCH, dtype=np.uint64)
        positions = ids.astype(np.int64) // PER_POSITION
        scan = np.stack([positions // NAV[1], positions % NAV[1]], axis=1).astype(np.int32)
        sender.send(encode_frames(series_id, seq, ids, scan, ids * 1000, pixels[first:first + BATCH]))
        time.sleep(pause_s)  # flushes happen between messages, as in a paced series
    sender.send(encode_series_end(series_id, FRAMES // BATCH + 1, "complete", FRAMES, 0))


def check_capture(path, pixels):
    """What the file says it holds (frame_status RECEIVED) is exactly what was sent."""
    with CaptureReader(path) as capture:
        status = capture.frame_status
        held = np.flatnonzero(status == RECEIVED)
        np.testing.assert_array_equal(capture.frames(held), pixels[held])
        return held, status, dict(capture.file.attrs)


def test_a_full_disk_mid_series_is_survived(small_disk, caplog):
    caplog.set_level(logging.ERROR)
    pixels = np.random.default_rng(1).integers(0, 65535, (FRAMES, SIDE, SIDE), dtype=np.uint16)
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    settings = ReceiverSettings(capture_dir=small_disk / "captures", data_endpoint=endpoint, overview_grace_s=0.2,
                                series_timeout_s=5.0, flush_interval_s=0.1)
    with Receiver(settings) as rx:
        send_series(sender, "fills", pixels, pause_s=0.02)
        full = rx.wait_for_series(1, 60)[0]
        status = rx.status()
        send_series(sender, "still-full", pixels)  # the disk has not been cleared: no capture at all
        nothing = rx.wait_for_series(2, 60)[1]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space is back
        send_series(sender, "after", pixels)
        after = rx.wait_for_series(3, 60)[2]
        final = rx.status()
    sender.close()
    # 1. the series that filled the disk: every frame accounted, the reason said everywhere
    a = full.accounting
    assert a["received"] == FRAMES and a["missing"] == a["rejected"] == 0
    assert 0 < a["not_stored"] < FRAMES
    assert any("No space left on device" in note and "not stored" in note for note in full.notes), full.notes
    assert status["capture_failures"] == 1 and "fills" in status["last_capture_failure"]
    assert any("fills" in r.getMessage() and "capture stopped" in r.getMessage() for r in caplog.records)
    # its capture opens, and holds intact every frame written before the disk filled
    held, on_disk, attrs = check_capture(full.path, pixels)
    stored = FRAMES - a["not_stored"]
    assert stored - BATCH <= len(held) <= stored and len(held) > 100
    assert attrs["state"] == "failed" and "No space left on device" in attrs["failure"]
    assert (on_disk[held.max() + 1:] != RECEIVED).all()  # nothing after the failure is claimed
    assert json.loads(attrs["accounting"])["received"] >= len(held)
    # 2. a series while the disk is still full: received and accounted, nothing written
    assert nothing.accounting["received"] == FRAMES and nothing.accounting["not_stored"] == FRAMES
    assert not nothing.path.exists() and any("no capture" in note for note in nothing.notes)
    # 3. space is back: the next series is captured whole, and nothing went wrong inside
    assert after.accounting["received"] == FRAMES and after.accounting["not_stored"] == 0
    assert after.notes == ["no overview image received"]  # (none was sent)
    held, _, attrs = check_capture(after.path, pixels)
    assert len(held) == FRAMES and attrs["state"] == "closed"
    assert final["capture_failures"] == 2 and final["internal_errors"] == 0 and rx.error is None
    assert not list((small_disk / "captures").glob(".*.reserve"))  # no space held after the series closed
