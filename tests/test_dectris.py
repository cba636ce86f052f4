"""DECTRIS streams into the receiver: stream v1 from libertem-dectris's own simulator (written by
others), stream v2 decoded from messages built here to DECTRIS's published specification (no
installable sender exists), the simulator's round trip with scan synchronisation, faults, and
opt-in checks against DECTRIS's published sample messages and a real detector."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from detector_streams import (FAULT_PLANS, assert_accounted, capture, check_fault_series, free_port,
                              receiver_settings, run_receiver, scan_source, unique_frames)
from simed_stream.detectors.dectris.sim import DectrisSimulator
from simed_stream.detectors.dectris.stream_v2 import V2Error, decode_message


# ---------------------------------------------------------------- stream v1, an independent sender

def test_libertem_dectris_simulator_streams_into_the_receiver(tmp_path):
    """DectrisSim.new_mocked: 512² uint16, bs16-lz4<, every pixel the frame index; the header and
    the configuration come as separate single-part messages. With a scan of 2×5 positions, one
    frame before the scan and one flyback frame per line, frame k must land where the geometry says."""
    libertem_dectris = pytest.importorskip("libertem_dectris")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sim = libertem_dectris.DectrisSim.new_mocked(uri=endpoint, num_frames=12)
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": (2, 5), "flyback_frames": 1,
                                                                 "start_frame": 1, "pattern": "serpentine"})

    def send():
        sim.send_headers()
        sim.send_frames()
        sim.send_footer()

    summary, = run_receiver(settings, send)
    frames, status, scan_yx, start, accounting = capture(summary)
    assert summary.end_status == "complete"
    assert (status == 1).all() and accounting["received"] == 10
    assert accounting["skipped"] == 2 and accounting["extra"] == 0  # frame 0 and frame 6 (flyback)
    assert frames.shape == (10, 512, 512) and frames.dtype == np.uint16
    detector_index = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]  # by hand: start 1, lines of 5 + 1 flyback
    positions = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]  # serpentine
    for frame_id in range(10):
        assert (frames[frame_id] == detector_index[frame_id]).all()
        assert tuple(scan_yx[frame_id]) == positions[frame_id]
    assert start["source"]["protocol"] == "DECTRIS stream v1" and start["source"]["frames_announced"] == 12


# ---------------------------------------------------------------- stream v2, built to the specification

def _bslz4(array: np.ndarray) -> bytes:
    """The bitshuffle HDF5 filter's framing, with bitshuffle's own encoder: 8-byte total, 4-byte block."""
    import bitshuffle

    block = 8192 // array.itemsize
    return struct.pack(">QI", array.nbytes, 8192) + bitshuffle.compress_lz4(array.reshape(-1), block).tobytes()


def _lz4_hdf5(data: bytes) -> bytes:
    import lz4.block

    out = [struct.pack(">QI", len(data), 1 << 14)]
    for start in range(0, len(data), 1 << 14):
        block = lz4.block.compress(data[start:start + (1 << 14)], store_size=False)
        out += [struct.pack(">I", len(block)), block]
    return b"".join(out)


def _v2(value) -> bytes:
    import cbor2

    return cbor2.dumps(cbor2.CBORTag(55799, value))


def _image_array(array: np.ndarray, compression: str, column_major: bool = False, big_endian: bool = False):
    import cbor2

    kind = {1: 68, 2: 69, 4: 70}[array.itemsize] if not big_endian else {2: 65, 4: 66}[array.itemsize]
    flat = array.ravel(order="F" if column_major else "C").astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    raw = flat.tobytes()
    data = {"none": raw, "bslz4": lambda: cbor2.CBORTag(56500, ["bslz4", array.itemsize, _bslz4(flat)]),
            "lz4": lambda: cbor2.CBORTag(56500, ["lz4", 0, _lz4_hdf5(raw)])}[compression]
    data = data() if callable(data) else data
    return cbor2.CBORTag(1040 if column_major else 40, [list(array.shape), cbor2.CBORTag(kind, data)])


@pytest.mark.parametrize("dtype, compression", [("|u1", "bslz4"), ("<u2", "bslz4"), ("<u4", "bslz4"),
                                                ("<u2", "lz4"), ("<u4", "none")])
def test_stream_v2_messages_built_to_the_specification(tmp_path, dtype, compression):
    """start / image / end CBOR maps as stream_v2/README.md and cbor/dectris-compression-tag.md
    define them, sent on a plain PUSH socket: two channels (the second is taken), a pixel mask,
    one column-major and one big-endian image among them."""
    import cbor2

    frames = unique_frames(6, shape=(20, 24), dtype=dtype)
    decoy = frames[::-1].copy()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    mask = np.zeros((20, 24), "<u4")
    mask[3, 4] = 1
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": (2, 3)}, dectris={"channel": "threshold_2"})
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)

    def send():
        push.send(_v2({"type": "start", "series_id": 7, "series_unique_id": "01TEST", "number_of_images": 6,
                       "channels": ["threshold_1", "threshold_2"], "image_size_x": 24, "image_size_y": 20,
                       "pixel_mask": {"threshold_2": cbor2.CBORTag(40, [[20, 24], cbor2.CBORTag(70, mask.tobytes())])}}))
        for i in range(6):
            image = _image_array(frames[i], compression, column_major=i == 2,
                                 big_endian=i == 4 and frames.itemsize > 1 and compression == "none")
            push.send(_v2({"type": "image", "series_id": 7, "series_unique_id": "01TEST", "image_id": i,
                           "start_time": [i, 1000], "stop_time": [i + 1, 1000], "real_time": [1, 1000],
                           "data": {"threshold_1": _image_array(decoy[i], compression), "threshold_2": image}}))
        push.send(_v2({"type": "end", "series_id": 7, "series_unique_id": "01TEST"}))

    try:
        summary, = run_receiver(settings, send)
    finally:
        push.close(linger=1000)
        context.term()
    captured, status, _yx, start, accounting = capture(summary)
    assert summary.end_status == "complete" and (status == 1).all()
    np.testing.assert_array_equal(captured, frames)
    assert start["unique_id"] == "01TEST" and start["detector"]["dtype"] == np.dtype(dtype).str
    import h5py

    with h5py.File(summary.path) as f:
        assert f["pixel_mask"][:].sum() == 1 and f["pixel_mask"][3, 4] == 1


def test_a_detector_mask_that_does_not_fit_the_frames_is_dropped_and_the_series_kept(tmp_path):
    """A 4×4 mask with 20×24 frames: the series arrives whole, without the mask, with a note
    (the mask once made the series start unreadable, so the series was lost)."""
    import cbor2
    import h5py

    frames = unique_frames(6, shape=(20, 24), dtype="<u2")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": (2, 3)})
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    mask = np.ones((4, 4), "<u4")

    def send():
        push.send(_v2({"type": "start", "series_id": 8, "series_unique_id": "01MASK", "number_of_images": 6,
                       "channels": ["threshold_1"], "image_size_x": 4, "image_size_y": 4,
                       "pixel_mask": {"threshold_1": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(70, mask.tobytes())])}}))
        for i in range(6):
            push.send(_v2({"type": "image", "series_id": 8, "series_unique_id": "01MASK", "image_id": i,
                           "data": {"threshold_1": _image_array(frames[i], "none")}}))
        push.send(_v2({"type": "end", "series_id": 8, "series_unique_id": "01MASK"}))

    try:
        summary, = run_receiver(settings, send)
    finally:
        push.close(linger=1000)
        context.term()
    captured, status, _yx, _start, _accounting = capture(summary)
    assert summary.end_status == "complete" and (status == 1).all()
    np.testing.assert_array_equal(captured, frames)
    with h5py.File(summary.path) as f:
        assert "pixel_mask" not in f
    assert any("pixel mask is [4, 4], the frames [20, 24]: not used" in note for note in summary.notes)


def test_stream_v2_rejects_what_breaks_the_specification():
    import cbor2

    huge = _v2({"type": "image", "data": {"t": cbor2.CBORTag(56500, ["bslz4", 2, struct.pack(">QI", 1 << 40, 8192)])}})
    assert "declares" in decode_message(huge)["data"]["t"].reason  # refused before allocating; the image still counts
    for bad, why in [(b"\xff\x00garbage", "not a CBOR message"), (_v2({"type": "other"}), "not a stream v2"),
                     (_v2({"type": "image", "data": {"t": cbor2.CBORTag(40, [[3, 3], cbor2.CBORTag(69, b"\0" * 4)])}}),
                      "dimensions")]:
        with pytest.raises(V2Error, match=why):
            decode_message(bad)


@pytest.mark.skipif(not os.environ.get("SIMED_DECTRIS_V2_SAMPLES"),
                    reason="set SIMED_DECTRIS_V2_SAMPLES to DECTRIS's stream_v2/test_data folder")
def test_decodes_dectris_published_sample_messages():
    """DECTRIS's own sample messages (dectris/documentation, stream_v2/test_data): every image
    decodes to a 514×1030 array per channel with the dtype its folder names."""
    root = Path(os.environ["SIMED_DECTRIS_V2_SAMPLES"])
    seen = 0
    for path in sorted(root.glob("*/0000*.cbor")):
        message = decode_message(path.read_bytes())
        if message["type"] == "image":
            bits = int(path.parent.name.rsplit("_", 1)[-1].removesuffix("bit"))
            for array in message["data"].values():
                assert array.shape == (514, 1030) and array.dtype.itemsize * 8 == bits
            seen += 1
    assert seen


@pytest.mark.skipif(not os.environ.get("SIMED_DECTRIS_ENDPOINT"),
                    reason="set SIMED_DECTRIS_ENDPOINT (and SIMED_DECTRIS_SCAN=HxW) to a real DECTRIS stream")
def test_a_real_dectris_detector(tmp_path):
    """Arm the detector for one series of HxW images after starting this test."""
    shape = os.environ.get("SIMED_DECTRIS_SCAN", "16x16")
    settings = receiver_settings(tmp_path, "dectris", os.environ["SIMED_DECTRIS_ENDPOINT"], {"shape": shape})
    summary, = run_receiver(settings, lambda: None, timeout_s=float(os.environ.get("SIMED_DETECTOR_WAIT_S", "300")))
    assert_accounted(summary.accounting)
    assert summary.accounting["received"] > 0


# ---------------------------------------------------------------- our simulator: round trip and faults

@pytest.mark.parametrize("version, compression", [(1, "bslz4"), (1, "lz4"), (1, "none"), (2, "bslz4"), (2, "lz4")])
def test_simulator_round_trip_with_flyback(tmp_path, version, compression):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    source = scan_source("rt", nav_shape=(3, 4), frames_per_position=2, pattern="serpentine")
    frames = unique_frames(24)
    sim = DectrisSimulator(endpoint, version, compression, flyback_frames=2, start_frame=3)
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": (3, 4), "frames_per_position": 2,
                                                                 "pattern": "serpentine", "flyback_frames": 2,
                                                                 "start_frame": 3})
    try:
        summary, = run_receiver(settings, lambda: sim.stream(source))
    finally:
        sim.close()
    captured, status, scan_yx, _start, accounting = capture(summary)
    np.testing.assert_array_equal(captured, frames)
    assert (status == 1).all() and accounting["skipped"] == 3 + 2 * 2  # start, and the flyback of 2 lines
    from simed_stream.protocol import scan_order

    np.testing.assert_array_equal(scan_yx, np.repeat(scan_order((3, 4), "serpentine"), 2, axis=0))


@pytest.mark.parametrize("version", [1, 2])
def test_faults_every_frame_accounted_and_the_receiver_goes_on(tmp_path, version):
    """Truncated frames are rejected by id, garbage is a rejected message, a series cut short is
    missing frames, a longer one has extra frames, a detector that vanishes mid-series times out:
    every frame is accounted for and the next series is received whole."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    scan = {"shape": (3, 4), "frames_per_position": 2}
    settings = receiver_settings(tmp_path, "dectris", endpoint, scan, series_timeout_s=1.0)
    plans = FAULT_PLANS
    sims = []

    def send():
        for number, faults in enumerate(plans):
            sim = DectrisSimulator(endpoint, version, faults=faults)
            sims.append(sim)
            sim.series_count = number
            sim.stream(scan_source(f"s{number}", (3, 4), 2))
            sim.close()

    summaries = run_receiver(settings, send, series=len(plans))
    assert [s.series_id for s in summaries] == [f"dectris-{n + 1}" for n in range(len(plans))]
    check_fault_series(summaries, "complete", "incomplete")
