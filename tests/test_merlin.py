"""Merlin streams into the receiver: from LiberTEM-live's Merlin simulator (written by others)
serving a .hdr + .mib acquisition written here, in 6-, 12- and 24-bit; our simulator's round
trip; faults; and an opt-in test against a real Merlin."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from detector_streams import (assert_accounted, capture, check_fault_series, free_port, receiver_settings,
                              run_fault_plans, run_receiver, scan_source, unique_frames)
from simed_stream.detectors.merlin.adapter import parse_acquisition_header, parse_frame_header
from simed_stream.detectors.merlin.sim import MerlinSimulator

MIB_TYPES = {1: ("U08", ">u1", 6), 2: ("U16", ">u2", 12), 4: ("U32", ">u4", 24)}


def write_acquisition(folder, frames: np.ndarray, frames_per_trigger: int):
    """A .hdr and a .mib as a Merlin writes them, by hand: the HDR text, and per frame a 384-byte
    MQ1 header (NUL-padded) followed by big-endian pixels."""
    pixel_type, wire, depth = MIB_TYPES[frames.itemsize]
    n, h, w = frames.shape
    hdr = (f"HDR,\t\nTime and Date Stamp (day, mnth, yr, hr min s):\t02/12/2026 10:00:00\nChip ID:\tW529_F5,-,-,-\n"
           f"Assembly Size (NX1, 2X2):\t   1x1\nCounter Depth (number):\t{depth}\n"
           f"Frames in Acquisition (Number):\t{n}\nFrames per Trigger (Number):\t{frames_per_trigger}\nEnd\t")
    (folder / "scan.hdr").write_text(hdr)
    with open(folder / "scan.mib", "wb") as f:
        for i, frame in enumerate(frames):
            header = (f"MQ1,{i + 1:06d},00384,01,{w:04d},{h:04d},{pixel_type},   1x1,01,2026-12-02 10:00:00.000000,"
                      "0.000500,0,0,0," + ",".join(["1.200000E+2"] * 8) + ",3RX," + ",".join(["175"] * 25)
                      + f",MQ1A,2026-12-02T10:00:00.000000000Z,500000ns,{depth},")
            f.write(header.encode().ljust(384, b"\x00"))
            f.write(frame.astype(wire).tobytes())
    return folder / "scan.hdr"


@pytest.mark.parametrize("dtype", ["|u1", "<u2", "<u4"])
def test_libertem_live_merlin_simulator_streams_into_the_receiver(tmp_path, dtype):
    """LiberTEM-live's CameraSim serves the acquisition on its data port after STARTACQUISITION and
    a trigger (its events, set here as its control socket would); 4×3 positions, 2 frames each."""
    sim_module = pytest.importorskip("libertem_live.detectors.merlin.sim")
    frames = unique_frames(24, shape=(24, 40), dtype=dtype)
    if dtype == "<u4":
        frames[:, 0, 0] = np.arange(24) + (1 << 23)  # 24-bit counts
    hdr = write_acquisition(tmp_path, frames, frames_per_trigger=6)
    camera = sim_module.CameraSim(path=str(hdr), nav_shape=(4, 6), host="127.0.0.1", data_port=0, control_port=0,
                                  trigger_port=0, wait_trigger=True)
    camera.start()
    camera.wait_for_listen()
    endpoint = f"tcp://127.0.0.1:{camera.server_t.port}"
    settings = receiver_settings(tmp_path, "merlin", endpoint, {"shape": (4, 3), "frames_per_position": 2})

    def trigger():
        time.sleep(0.5)  # the receiver connects first
        camera.acquisition_event.set()
        time.sleep(0.2)
        camera.trigger_event.set()

    try:
        summary, = run_receiver(settings, trigger)
    finally:
        camera.stop_event.set()
    captured, status, scan_yx, start, accounting = capture(summary)
    assert summary.end_status == "complete" and (status == 1).all() and accounting["extra"] == 0
    np.testing.assert_array_equal(captured, frames)
    assert captured.dtype == np.dtype(dtype)
    assert start["source"]["frames_announced"] == 24 and start["source"]["header"]["Counter Depth (number)"] == \
        str(MIB_TYPES[frames.itemsize][2])


def test_headers_parse_as_written():
    fields = parse_acquisition_header(b"HDR,\t\nCounter Depth (number):\t12\nFrames in Acquisition (Number):\t100\nEnd\t")
    assert fields == {"Counter Depth (number)": "12", "Frames in Acquisition (Number)": "100"}
    header = ("MQ1,000007,00384,04,0512,0256,U32,   2x2,0F,2026-12-02 10:00:00.000000,0.000500,0,0,0,"
              "MQ1A,2026-12-02T10:00:00.000000000Z,500000ns,24,").encode().ljust(384, b"\x00")
    parsed = parse_frame_header(memoryview(header + bytes(512 * 256 * 4)))
    assert parsed == {"sequence": 7, "header_bytes": 384, "chips": 4, "width": 512, "height": 256,
                      "pixel_type": "U32", "layout": "2x2", "counter_depth": 24}


def test_simulator_round_trip_with_start_and_flyback(tmp_path):
    sim = MerlinSimulator("tcp://127.0.0.1:0", flyback_frames=1, start_frame=2)
    source = scan_source("m", (3, 4), 2, pattern="serpentine")
    settings = receiver_settings(tmp_path, "merlin", f"tcp://127.0.0.1:{sim.port}",
                                 {"shape": (3, 4), "frames_per_position": 2, "pattern": "serpentine",
                                  "flyback_frames": 1, "start_frame": 2})
    try:
        summary, = run_receiver(settings, lambda: sim.stream(source))
    finally:
        sim.close()
    captured, status, _yx, _start, accounting = capture(summary)
    np.testing.assert_array_equal(captured, unique_frames(24))
    assert accounting["skipped"] == 2 + 2 and summary.end_status == "complete"


def test_faults_every_frame_accounted_and_the_receiver_goes_on(tmp_path):
    """One connection, four acquisitions: truncated frames and garbage; a shorter one (HDR says
    15); a longer one (28: 4 extra); a clean one — then the detector drops the connection in a
    fifth. The receiver reconnects to nothing and closes the fifth as aborted."""
    sim = MerlinSimulator("tcp://127.0.0.1:0")
    settings = receiver_settings(tmp_path, "merlin", f"tcp://127.0.0.1:{sim.port}", {"shape": (3, 4),
                                                                                      "frames_per_position": 2})
    summaries = run_fault_plans(sim, settings)
    check_fault_series(summaries, "complete", "aborted")
    assert any("closed the connection after frame 9 of 24" in note for note in summaries[4].notes)


@pytest.mark.skipif(not os.environ.get("SIMED_MERLIN_ENDPOINT"),
                    reason="set SIMED_MERLIN_ENDPOINT=tcp://HOST:6342 (and SIMED_MERLIN_SCAN=HxW) for a real Merlin")
def test_a_real_merlin(tmp_path):
    """Start an acquisition of HxW frames on the Merlin after starting this test."""
    settings = receiver_settings(tmp_path, "merlin", os.environ["SIMED_MERLIN_ENDPOINT"],
                                 {"shape": os.environ.get("SIMED_MERLIN_SCAN", "16x16")})
    summary, = run_receiver(settings, lambda: None, timeout_s=float(os.environ.get("SIMED_DETECTOR_WAIT_S", "300")))
    assert_accounted(summary.accounting)
    assert summary.accounting["received"] > 0
