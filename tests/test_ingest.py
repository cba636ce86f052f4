"""Detector → receiver → capture over real ZeroMQ on loopback, with every fault kind."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import zmq

from simed_stream.capture import MISSING, RECEIVED, REJECTED, CaptureReader
from simed_stream.ingest import Receiver, ReceiverListener, ReceiverSettings
from simed_stream.ingest.stages import STAGES
from simed_stream.protocol import encode_header
from simed_stream.capture_replay import capture_series
from simed_stream.detectors.simed.fake import FakeDetector, FaultPlan
from simulator.synthetic import synthetic_series

SMALL = dict(nav_shape=(8, 8), frames_per_position=2, sig_shape=(64, 64), batch_frames=8, seed=5)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def settings_for(tmp_path, endpoint, **overrides):
    values = dict(data_endpoint=endpoint, overview_grace_s=0.5, series_timeout_s=1.5, max_message_bytes=2 << 20)
    values.update(overrides)
    return ReceiverSettings(capture_dir=tmp_path / "captures", **values)


def stream(tmp_path, faults="", source=None, receiver=None, **detector_options):
    endpoint = free_endpoint()
    settings = settings_for(tmp_path, endpoint, **(receiver or {}))
    source = source or synthetic_series("s1", **SMALL)
    with Receiver(settings) as rx:
        with FakeDetector(endpoint, None, rate_fps=detector_options.pop("rate_fps", "max"),
                          faults=FaultPlan.parse(faults), seed=detector_options.pop("seed", 1),
                          max_message_bytes=settings.max_message_bytes, **detector_options) as detector:
            report = detector.run([source])
        summary = rx.wait_for_series(1, 30)[0]
        status = rx.status()
    return summary, report, status


def expected_frames(**options):
    """Pixels by frame id, regenerated from the same synthetic source."""
    frames = {}
    for htype, _, payload in synthetic_series("again", **(SMALL | options)).messages:
        if htype == "frames":
            for frame_id, pixels in zip(payload[0], payload[3]):
                frames[int(frame_id)] = pixels
    return frames


def check_accounting(summary, report):
    a = summary.accounting
    assert a["received"] == len(set(report.frames_sent_ok))
    assert a["rejected"] == len(set(report.frames_in_bad_messages))
    assert a["missing"] == len(set(report.frames_lost_in_transit) | set(report.frames_in_garbage))
    assert a["dropped_at_source"] == len(report.frames_dropped_at_source)
    assert a["duplicates"] == len(report.frames_duplicated)
    assert a["received"] + a["rejected"] + a["dropped_at_source"] + a["missing"] == a["frames_expected"]
    with CaptureReader(summary.path) as capture:
        status = capture.frame_status
        np.testing.assert_array_equal(np.flatnonzero(status == RECEIVED), sorted(set(report.frames_sent_ok)))
        np.testing.assert_array_equal(np.flatnonzero(status == REJECTED), sorted(set(report.frames_in_bad_messages)))
        assert json.loads(capture.file.attrs["accounting"]) == a


def test_clean_stream_is_captured_losslessly(tmp_path):
    summary, report, status = stream(tmp_path)
    assert summary.end_status == "complete" and summary.overview and summary.notes == []
    assert summary.accounting["received"] == 128 and summary.accounting["coverage"] == 1.0
    check_accounting(summary, report)
    truth = expected_frames()
    with CaptureReader(summary.path) as capture:
        f = capture.file
        frames = f["frames"][:]
        for frame_id, pixels in truth.items():
            np.testing.assert_array_equal(frames[frame_id], pixels)
        assert "32001" in f["frames"]._filters  # Blosc: bitshuffle + LZ4, as detector vendors store frames
        # per-position sums and beam centres from the numba kernels, against plain numpy
        ny, nx = 8, 8
        scan_yx = f["scan_yx"][:]
        sums = f["positions/sum"][:]
        for p in (0, 9, 63):
            ids = np.flatnonzero(scan_yx[:, 0] * nx + scan_yx[:, 1] == p)
            np.testing.assert_array_equal(sums[p], frames[ids].astype(np.uint32).sum(axis=0))
        assert f["positions/valid"][:].all() and (f["positions/frame_count"][:] == 2).all()
        centres = f["positions/beam_centre_yx"][:].reshape(ny, nx, 2)
        # the synthetic beam sits at (32, 32) plus a drift of up to (2, 3) px across the scan
        np.testing.assert_allclose(centres[0, 0], (32, 32), atol=0.05)
        np.testing.assert_allclose(centres[-1, -1], (34, 35), atol=0.05)
        plane = f["positions/descan_plane_yx"][:]
        assert plane[1, 1] == pytest.approx(3 / 7, abs=0.1)  # x drift per scan column
        assert "overviews/0" in f and f.attrs["end_status"] == "complete"
    assert status["msg_seq_gaps"] == 0 and status["rejected_messages"] == 0
    spent = status["cpu_us_per_frame"]  # every stage ran on the clock, and took some CPU
    assert set(spent) == set(STAGES) and all(spent[stage] > 0 for stage in STAGES if stage != "copy"), spent


@pytest.mark.parametrize("fault", ["drop", "source_drop", "reorder", "duplicate", "truncate", "garbage",
                                   "wrong_shape", "wrong_dtype"])
def test_each_message_fault_is_accounted_for_exactly(tmp_path, fault):
    summary, report, status = stream(tmp_path, f"{fault}=0.25", seed=3)
    touched = {"drop": report.frames_lost_in_transit, "source_drop": report.frames_dropped_at_source,
               "reorder": report.frames_sent_ok, "duplicate": report.frames_duplicated,
               "truncate": report.frames_in_bad_messages, "garbage": report.frames_in_garbage,
               "wrong_shape": report.frames_in_bad_messages, "wrong_dtype": report.frames_in_bad_messages}[fault]
    assert touched, "the fault never fired: the test would prove nothing"
    check_accounting(summary, report)
    if fault in ("drop", "garbage"):  # a garbage message's msg_seq is unreadable: a gap like a lost one
        assert status["msg_seq_gaps"] > 0
        assert any("missing" in note for note in summary.notes)
    if fault in ("truncate", "wrong_shape", "wrong_dtype", "garbage"):
        assert status["rejected_messages"] > 0
    truth = expected_frames()
    with CaptureReader(summary.path) as capture:  # whatever was received is intact
        received = np.flatnonzero(capture.frame_status == RECEIVED)
        frames = capture.frames(received)
        for frame_id, pixels in zip(received, frames):
            np.testing.assert_array_equal(pixels, truth[int(frame_id)])


def test_oversize_and_disconnect(tmp_path):
    summary, report, status = stream(tmp_path, "oversize=1,disconnect=1")
    assert any("disconnect" in event for event in report.events)
    assert len(report.frames_in_bad_messages) == 8  # the oversize message's frames, rejected not lost
    check_accounting(summary, report)
    assert summary.accounting["received"] == 120


def test_missing_series_end_closes_on_timeout(tmp_path):
    summary, report, _ = stream(tmp_path, "no_end")
    assert summary.end_status == "incomplete"
    assert any("no series_end" in note for note in summary.notes)
    check_accounting(summary, report)


def test_missing_and_late_overview(tmp_path):
    summary, _, _ = stream(tmp_path, "no_overview")
    assert not summary.overview and "no overview image received" in summary.notes
    endpoint = free_endpoint()
    with Receiver(settings_for(tmp_path / "late", endpoint)) as rx:
        with FakeDetector(endpoint, None, rate_fps="max", faults=FaultPlan.parse("late_overview=2.5")) as detector:
            detector.run([synthetic_series("s2", **SMALL)])
        summary = rx.wait_for_series(1, 10)[0]
        deadline = time.monotonic() + 5
        while not summary.overview and time.monotonic() < deadline:
            time.sleep(0.05)
    assert summary.overview and "overview arrived after the series closed" in summary.notes
    with h5py.File(summary.path) as f:
        assert "overviews/0" in f


def test_backpressure_loses_nothing_with_tiny_queues(tmp_path):
    summary, report, _ = stream(tmp_path, receiver=dict(queue_messages=1, rcvhwm=1, max_message_bytes=16 << 20),
                                source=synthetic_series("bp", nav_shape=(16, 16), frames_per_position=4,
                                                        sig_shape=(256, 256), batch_frames=32))
    assert summary.accounting["received"] == 1024 and summary.accounting["missing"] == 0
    assert not report.frames_dropped_at_source


def test_unknown_series_and_garbage_do_not_crash_the_receiver(tmp_path):
    endpoint = free_endpoint()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    with Receiver(settings_for(tmp_path, endpoint)) as rx:
        push.send_multipart([b"\x00\x01"])
        push.send_multipart([encode_header({"htype": "series_end", "protocol": "simed-stream/1", "series_id": "ghost",
                                            "msg_seq": 1, "status": "complete", "frames_sent": 0,
                                            "frames_dropped_at_source": 0})])
        deadline = time.monotonic() + 5
        while rx.status()["rejected_messages"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rx.status()["rejected_messages"] == 2 and rx.error is None
    push.close(0)
    context.term()


def _record_raw(endpoint, stop_after_end=True, timeout_s=20):
    """A bare PULL socket keeping every multipart message as bytes."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(endpoint)
    messages = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pull.poll(100):
            parts = pull.recv_multipart()
            messages.append(parts)
            if stop_after_end and json.loads(parts[0])["htype"] == "series_end":
                break
    pull.close(0)
    context.term()
    return messages


def test_capture_replay_reproduces_the_stream_bit_for_bit(tmp_path):
    # 1. the original stream, recorded raw
    endpoint = free_endpoint()
    recorded = {}
    recorder = threading.Thread(target=lambda: recorded.setdefault("original", _record_raw(endpoint)))
    recorder.start()
    with FakeDetector(endpoint, None, rate_fps="max") as detector:
        detector.run([synthetic_series("rt", **SMALL)])
    recorder.join()
    original = recorded["original"]
    # 2. the same bytes into the receiver: capture A
    endpoint = free_endpoint()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    with Receiver(settings_for(tmp_path / "a", endpoint)) as rx:
        for parts in original:
            push.send_multipart(parts)
        capture_a = rx.wait_for_series(1, 10)[0].path
    push.close(0)
    context.term()
    # 3. capture A replayed by the detector, recorded raw: the original bytes again
    endpoint = free_endpoint()
    recorder = threading.Thread(target=lambda: recorded.setdefault("replay", _record_raw(endpoint)))
    recorder.start()
    with FakeDetector(endpoint, None, rate_fps="recorded") as detector:
        detector.run([capture_series(capture_a)])
    recorder.join()
    replay = recorded["replay"]
    assert len(replay) == len(original)
    for ours, theirs in zip(replay, original):
        assert ours == theirs
    # 4. and replayed into a receiver: capture B holds the same data as capture A
    summary, _, _ = stream(tmp_path / "b", source=capture_series(capture_a), rate_fps="recorded")
    with h5py.File(capture_a) as a, h5py.File(summary.path) as b:
        for name in ("frames", "frame_status", "scan_yx", "timestamp_ns", "frame_message", "frame_slot",
                     "messages/header", "positions/sum", "positions/beam_centre_yx", "overviews/0"):
            np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
        assert a.attrs["series_start"] == b.attrs["series_start"]


def test_control_socket_arms_reports_and_aborts(tmp_path):
    data, control = free_endpoint(), free_endpoint()
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(control)

    def ask(command):
        req.send(json.dumps({"command": command}).encode())
        return json.loads(req.recv())

    source = synthetic_series("ctl", nav_shape=(32, 32), frames_per_position=4, sig_shape=(64, 64), batch_frames=16)
    with Receiver(settings_for(tmp_path, data)) as rx:
        with FakeDetector(data, control, rate_fps=2000, wait_for_arm=True, heartbeat_s=0.1) as detector:
            runner = threading.Thread(target=detector.run, args=([source],))
            runner.start()
            time.sleep(0.3)
            assert ask("status")["state"] == "waiting for arm"
            assert ask("arm")["ok"]
            time.sleep(0.5)
            status = ask("status")
            assert status["state"] == "acquiring" and 0 < status["frames_sent"] < 4096
            assert ask("abort")["ok"]
            assert ask("dance") == {"ok": False, "error": 'expected JSON {"command": "status"|"arm"|"abort"}'}
            runner.join(10)
        summary = rx.wait_for_series(1, 10)[0]
        assert rx.status()["heartbeats"] >= 1
    req.close(0)
    context.term()
    assert summary.end_status == "aborted"
    assert 0 < summary.accounting["received"] < 4096
    assert summary.accounting["received"] + summary.accounting["missing"] == 4096


def test_killed_receiver_leaves_a_readable_capture(tmp_path):
    endpoint = free_endpoint()
    out = tmp_path / "killed"
    receiver = subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "receive", "--data", endpoint,
                                 "--out", str(out)])
    source = synthetic_series("cut", **(SMALL | dict(nav_shape=(32, 32), frames_per_position=4, batch_frames=16)))
    detector = FakeDetector(endpoint, None, rate_fps=400, send_timeout_s=0.2)  # 4096 frames: 10 s
    with detector:
        runner = threading.Thread(target=detector.run, args=([source],))
        runner.start()
        # kill it once it is well into the series (its start-up, numba's compile included, can take
        # seconds on a busy machine) and has had a flush interval to write some of it
        deadline = time.monotonic() + 120
        while detector.status()["frames_sent"] < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        os.kill(receiver.pid, signal.SIGKILL)
        receiver.wait()
        detector._stop.set()
        runner.join(20)
    truth = expected_frames(nav_shape=(32, 32), frames_per_position=4, batch_frames=16)
    with CaptureReader(out / "cut.h5") as capture:
        status = capture.frame_status
        received = np.flatnonzero(status == RECEIVED)
        assert 100 < len(received) < 4096 and (status[received.max() + 1:] == MISSING).all()
        for frame_id, pixels in zip(received, capture.frames(received)):
            np.testing.assert_array_equal(pixels, truth[int(frame_id)])
        assert capture.file.attrs["state"] == "open"  # it never closed, and says so


def test_loop_repeats_the_series_under_new_ids(tmp_path):
    endpoint = free_endpoint()
    with Receiver(settings_for(tmp_path, endpoint)) as rx:
        with FakeDetector(endpoint, None, rate_fps="max") as detector:
            runner = threading.Thread(target=detector.run, args=([lambda: synthetic_series("lp", **SMALL)],),
                                      kwargs={"loop": True})
            runner.start()
            summaries = rx.wait_for_series(2, 20)
            detector._stop.set()
            runner.join(10)
    assert [s.series_id for s in summaries[:2]] == ["lp", "lp-r1"]
    assert all(s.accounting["received"] == 128 for s in summaries[:2])


# ---- regressions from review: hostile input must never stop the receiver

from simed_stream.protocol import encode_frames, encode_series_end, encode_series_start  # noqa: E402

START = {
    "unique_id": "u", "detector": {"model": "t", "sig_shape": [8, 8], "dtype": "<u2", "bit_depth": 12,
                                   "pixel_pitch_um": 55.0},
    "scan": {"nav_shape": [1, 8], "pattern": "raster", "frames_per_position": 1, "dwell_s": 0.001, "step_A": 1.0,
             "rotation_deg": 0.0, "frames_expected": 8},
    "optics": {}, "microscope": {}, "trigger_mode": "internal", "encoding": "raw", "user_data": {},
}


class RawSender:
    """A bare PUSH socket sending hand-made messages to a Receiver."""

    def __init__(self, endpoint):
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.bind(endpoint)
        self.seq = 0

    def send(self, parts):
        self.push.send_multipart([bytes(p) for p in parts])

    def frames(self, sid, ids, nx=8):
        ids = np.asarray(ids, np.uint64)
        scan = np.stack([np.zeros(len(ids)), ids.astype(np.int64) % nx], axis=1).astype(np.int32)
        pixels = (np.arange(len(ids))[:, None, None] * 0 + ids.astype(np.uint16)[:, None, None] * 100
                  + np.ones((len(ids), 8, 8), np.uint16))
        self.seq += 1
        return encode_frames(sid, self.seq, ids, scan, ids * 10, pixels.astype("<u2"))

    def close(self):
        self.push.close(0)
        self.context.term()


def _wait(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_hostile_headers_are_rejected_and_the_receiver_carries_on(tmp_path):
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    hostile = [
        [b"[" * 100000 + b"]" * 100000],
        [b'{"protocol": "simed-stream/1", "htype": "frames", "msg_seq": ' + b"9" * 5000 + b"}"],
        [encode_header({"protocol": "simed-stream/1", "htype": [], "msg_seq": 1, "series_id": "s"})],
        [encode_header({"protocol": "simed-stream/1", "htype": "frames", "msg_seq": 1, "series_id": "s",
                        "first_frame_id": 2**64, "count": 1, "shape": [2**32, 2**32], "dtype": []})],
        encode_series_start("huge", 1, START | {"detector": START["detector"] | {"sig_shape": [65536, 65536]}}),
        encode_series_start("neg", 1, START | {"scan": START["scan"] | {"pattern": "list", "frames_expected": -1}}),
        [b"x"] * 41,
    ]
    with Receiver(settings_for(tmp_path, endpoint)) as rx:
        for parts in hostile:
            sender.send(parts)
        sender.send(encode_series_start("ok", 0, START))
        sender.send(sender.frames("ok", range(8)))
        sender.send(encode_series_end("ok", 9, "complete", 8, 0))
        summary = rx.wait_for_series(1, 10)[0]
        status = rx.status()
        assert rx.error is None and status["internal_errors"] == 0
        assert status["rejected_messages"] == len(hostile)
    sender.close()
    assert summary.accounting["received"] == 8


def test_a_message_spanning_more_positions_than_the_pool_sums_correctly(tmp_path):
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    with Receiver(settings_for(tmp_path, endpoint, max_pending_positions=4)) as rx:
        sender.send(encode_series_start("ev", 0, START))
        sender.send(sender.frames("ev", range(8)))
        sender.send(encode_series_end("ev", 9, "complete", 8, 0))
        summary = rx.wait_for_series(1, 10)[0]
    sender.close()
    with h5py.File(summary.path) as f:
        sums, frames = f["positions/sum"][:], f["frames"][:]
        counts = f["positions/frame_count"][:]
    for position in range(8):
        if counts[position]:
            np.testing.assert_array_equal(sums[position], frames[position])  # never two frames in one slot
    assert counts.sum() == 8


def test_capture_names_never_collide_and_open_series_are_bounded(tmp_path):
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    with Receiver(settings_for(tmp_path, endpoint, max_open_series=2)) as rx:
        for sid in ("x/y", "x_y", "third"):
            sender.send(encode_series_start(sid, 0, START))
        assert _wait(lambda: rx.status()["rejected_messages"] == 1)  # the third: two are open already
        assert set(rx.status()["open_series"]) == {"x/y", "x_y"}
    sender.close()
    names = sorted(p.name for p in (tmp_path / "captures").glob("*.h5"))
    assert names == ["x_y-2.h5", "x_y.h5"]


def test_partially_duplicated_message_replays_verbatim(tmp_path):
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    with Receiver(settings_for(tmp_path, endpoint)) as rx:
        sender.send(encode_series_start("pd", 0, START))
        sent = [sender.frames("pd", [0, 1, 2, 3]), sender.frames("pd", [2, 3, 4, 5]), sender.frames("pd", [6, 7])]
        for parts in sent:
            sender.send(parts)
        sender.send(encode_series_end("pd", 9, "complete", 8, 0))
        summary = rx.wait_for_series(1, 10)[0]
    sender.close()
    assert summary.accounting["duplicates"] == 2 and summary.accounting["received"] == 8
    replayed = [payload for htype, _, payload in capture_series(summary.path).messages if htype == "frames"]
    for original, (ids, scan_yx, stamps, pixels) in zip(sent, replayed):
        np.testing.assert_array_equal(ids, np.frombuffer(bytes(original[1]), "<u8"))
        assert bytes(np.ascontiguousarray(pixels)) == bytes(original[4])


class StallingListener(ReceiverListener):
    """A listener that blocks the processing thread once for `stall_s`: what a full hand-over
    queue (the live pipeline's back-pressure, or numba compiling on a cold start) does to the
    receiver, for real."""

    def __init__(self, stall_s: float, on: str, nth: int = 1):
        self.stall_s, self.on, self.nth, self.calls, self.stalled = stall_s, on, nth, 0, False

    def _maybe_stall(self, event: str) -> None:
        if event == self.on:
            self.calls += 1
            if self.calls == self.nth:
                self.stalled = True
                time.sleep(self.stall_s)

    def series_started(self, start):
        self._maybe_stall("series_started")

    def position_sum(self, record):
        self._maybe_stall("position_sum")


@pytest.mark.parametrize("stall_on", ["series_started", "position_sum"])
def test_a_processing_stall_longer_than_the_timeout_loses_nothing(tmp_path, stall_on):
    """The series timeout is silence on the wire, not the receiver's own stall: while processing
    is blocked for 4× the timeout, the detector keeps sending (its messages wait in the queue);
    the series must still close complete, every frame received, none rejected."""
    endpoint = free_endpoint()
    listener = StallingListener(2.0, stall_on)
    settings = settings_for(tmp_path, endpoint, series_timeout_s=0.5, overview_grace_s=0.5)
    with Receiver(settings, listener=listener) as rx:
        with FakeDetector(endpoint, None, rate_fps="max", seed=1, max_message_bytes=settings.max_message_bytes) as detector:
            report = detector.run([synthetic_series("stall", **SMALL)])
        summary = rx.wait_for_series(1, 30)[0]
        status = rx.status()
    assert listener.stalled
    assert summary.end_status == "complete" and summary.notes == [], summary.notes
    assert summary.accounting["received"] == 128 and summary.accounting["rejected"] == 0
    assert status["rejected_messages"] == 0 and status["frames_rejected"] == 0
    check_accounting(summary, report)


def test_a_stall_that_blocks_the_receive_thread_times_out_no_interleaved_series(tmp_path):
    """Two series interleaved frame by frame, the tiniest queues: a 2 s processing stall
    blocks the receive thread too (back-pressure). Time spent blocked is not silence: the series
    whose next message still waits in ZeroMQ's buffer must not be closed as timed out."""
    endpoint = free_endpoint()
    sender = RawSender(endpoint)
    listener = StallingListener(2.0, "series_started", nth=2)
    settings = settings_for(tmp_path, endpoint, series_timeout_s=0.5, queue_messages=1, rcvhwm=1)
    with Receiver(settings, listener=listener) as rx:
        sender.send(encode_series_start("a", 0, START))
        sender.send(encode_series_start("b", 0, START))
        for frame_id in range(8):
            for sid in ("a", "b"):
                sender.send(sender.frames(sid, [frame_id]))
        for sid in ("a", "b"):
            sender.send(encode_series_end(sid, 99, "complete", 8, 0))
        summaries = rx.wait_for_series(2, 20)
        status = rx.status()
    sender.close()
    assert listener.stalled
    assert sorted(s.series_id for s in summaries) == ["a", "b"]
    for summary in summaries:
        assert summary.end_status == "complete", summary  # its series_end came while it was open
        assert not any("no series_end" in note or "missing" in note for note in summary.notes), summary.notes
        assert summary.accounting["received"] == 8 and summary.accounting["rejected"] == 0
    assert status["rejected_messages"] == 0


def test_a_cold_start_loses_nothing(tmp_path):
    """The failure of a fresh clone: numba with nothing cached (its own empty cache here), a clean
    series streamed as fast as possible into `simed receive`; every frame must be captured."""
    endpoint = free_endpoint()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    receiver = subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "receive", "--data", endpoint,
                                 "--out", str(tmp_path / "captures"), "--series", "1", "--series-timeout-s", "1.5",
                                 "--overview-grace-s", "0.5"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        with FakeDetector(endpoint, None, rate_fps="max", peer_timeout_s=120) as detector:
            report = detector.run([synthetic_series("cold", **SMALL)])
        out, _ = receiver.communicate(timeout=120)
    finally:
        receiver.kill()
    assert receiver.returncode == 0, out
    assert "series cold closed (complete)" in out and "note:" not in out, out
    with CaptureReader(tmp_path / "captures" / "cold.h5") as capture:
        assert capture.accounting["received"] == 128 and capture.accounting["rejected"] == 0
        np.testing.assert_array_equal(np.flatnonzero(capture.frame_status == RECEIVED), sorted(report.frames_sent_ok))
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "numba did not use the empty cache: not a cold start"


def test_a_closed_series_frees_its_sums_pool_without_waiting_for_the_garbage_collector(tmp_path):
    """Each series' pool of position sums is tens of MB; found by tools/soak.py: a reference cycle
    (the pool's owner calls back into its series) kept a dozen closed series' pools alive until
    Python's rare full collection. With the collector off, closed series must leave none."""
    import gc

    from simed_stream.ingest.sums import PositionSums

    endpoint = free_endpoint()
    gc.collect()
    gc.disable()
    try:
        with Receiver(settings_for(tmp_path, endpoint, overview_grace_s=0.1)) as rx:
            with FakeDetector(endpoint, None, rate_fps="max") as detector:
                detector.run([synthetic_series(f"pool-{i}", (8, 8), 2, (64, 64)) for i in range(4)])
            rx.wait_for_series(4, 30)
            # type(), not isinstance(): a dead weak proxy among the objects raises on isinstance
            alive = [o for o in gc.get_objects() if type(o) is PositionSums and o.pool is not None]
    finally:
        gc.enable()
    assert alive == []
