"""ASI Serval's jsonimage stream into the receiver. No sender of it can be installed here (ASI's
emulator is closed): frames are built in this file to the two header formats Serval versions
send, in both byte orders, over a plain socket in both connection directions; then our
simulator's faults, and an opt-in test against a real Serval."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from detector_streams import (assert_accounted, capture, check_fault_series, free_port, receiver_settings,
                              run_fault_plans, run_receiver, scan_source, unique_frames)
from simed_stream.detectors.serval.sim import ServalSimulator


def _jsonimage(frame: np.ndarray, number: int, variant: str, order: str) -> bytes:
    h, w = frame.shape
    if variant == "new":  # Serval 3.x / 4.x
        header = {"width": w, "height": h, "pixelFormat": f"uint{8 * frame.itemsize}", "frameNumber": number,
                  "timeAtFrame": 1.7e18 + number * 1e6, "thresholdID": 0}
    else:  # older Serval
        header = {"timeAtFrame": 1.7e18, "frameNumber": number, "measurementID": 42, "dataSize": frame.nbytes,
                  "bitDepth": 8 * frame.itemsize, "width": w, "height": h}
    return json.dumps(header).encode() + b"\n" + frame.astype(frame.dtype.newbyteorder(order)).tobytes()


@pytest.mark.parametrize("variant, order, dtype, listen", [("new", ">", "<u2", False), ("new", "<", "<u4", True),
                                                          ("old", ">", "<u2", True), ("old", "<", "|u1", False)])
def test_jsonimage_frames_built_to_both_header_formats(tmp_path, variant, order, dtype, listen):
    frames = unique_frames(12, shape=(20, 28), dtype=dtype)
    port = free_port()
    byte_order = "big" if order == ">" else "little"
    server = None if listen else socket.create_server(("127.0.0.1", port))
    endpoint = f"tcp://{'listen@' if listen else ''}127.0.0.1:{port}"
    settings = receiver_settings(tmp_path, "serval", endpoint, {"shape": (2, 3), "frames_per_position": 2},
                                 serval={"byte_order": byte_order})

    def send():
        if listen:  # Serval's `tcp://connect@...` destination: it connects to us
            for _ in range(100):
                try:
                    connection = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.05)
        else:
            server.settimeout(30)
            connection, _ = server.accept()
        with connection:
            for number, frame in enumerate(frames):
                connection.sendall(_jsonimage(frame, number, variant, order))
            time.sleep(1.0)  # then the measurement is over and the wire quiet

    try:
        summary, = run_receiver(settings, send)
    finally:
        if server is not None:
            server.close()
    captured, status, _yx, start, accounting = capture(summary)
    assert summary.end_status == "complete" and (status == 1).all(), summary.notes
    np.testing.assert_array_equal(captured, frames)
    assert start["source"]["protocol"] == "Serval jsonimage"
    assert start["detector"]["dtype"] == np.dtype(dtype).str


def test_the_wrong_byte_order_shows_in_the_pixels(tmp_path):
    """Big-endian frames read as little-endian are not the frames: the setting is what decides."""
    frames = unique_frames(6, shape=(8, 8))
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    settings = receiver_settings(tmp_path, "serval", f"tcp://127.0.0.1:{port}", {"shape": (2, 3)},
                                 serval={"byte_order": "little"})

    def send():
        connection, _ = server.accept()
        with connection:
            connection.sendall(b"".join(_jsonimage(f, i, "new", ">") for i, f in enumerate(frames)))
            time.sleep(1.0)

    try:
        summary, = run_receiver(settings, send)
    finally:
        server.close()
    captured = capture(summary)[0]
    np.testing.assert_array_equal(captured, frames.byteswap())


def test_faults_every_frame_accounted_and_the_receiver_goes_on(tmp_path):
    """Over one connection: truncated frames and garbage, a measurement that restarts its frame
    numbers early (a shorter series), a longer one (extra frames), a clean one; then Serval drops
    the connection mid-measurement."""
    sim = ServalSimulator("tcp://127.0.0.1:0", variant="old")
    settings = receiver_settings(tmp_path, "serval", f"tcp://127.0.0.1:{sim.port}", {"shape": (3, 4),
                                                                                      "frames_per_position": 2})
    summaries = run_fault_plans(sim, settings, lambda number: 0.8 if number in (2, 3) else 0.0)  # quiet after whole scans; the short one is cut by the next
    check_fault_series(summaries, "aborted", "aborted")


@pytest.mark.skipif(not os.environ.get("SIMED_SERVAL_ENDPOINT"),
                    reason="set SIMED_SERVAL_ENDPOINT (tcp://HOST:PORT or tcp://listen@HOST:PORT), SIMED_SERVAL_SCAN "
                    "and SIMED_SERVAL_BYTE_ORDER for a real Serval")
def test_a_real_serval(tmp_path):
    """Start a measurement of HxW frames with a jsonimage destination after starting this test."""
    settings = receiver_settings(tmp_path, "serval", os.environ["SIMED_SERVAL_ENDPOINT"],
                                 {"shape": os.environ.get("SIMED_SERVAL_SCAN", "16x16")},
                                 serval={"byte_order": os.environ.get("SIMED_SERVAL_BYTE_ORDER", "big")})
    summary, = run_receiver(settings, lambda: None, timeout_s=float(os.environ.get("SIMED_DETECTOR_WAIT_S", "300")))
    assert_accounted(summary.accounting)
    assert summary.accounting["received"] > 0
