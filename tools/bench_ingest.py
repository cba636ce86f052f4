"""Benchmark live ingest: the transport ceiling against full ingest, in one run.

The fake detector runs in its own process (`simed detector --synthetic`), streaming 256×256
uint16 frames in batches of 64. In the same run:
  (a) raw: a receiver that only receives the messages and discards them (the ceiling),
  (b) ingest: the real receiver — receive, validate, sum and centre per position, compress,
      write the capture — as fast as the detector can send,
  (c) paced: the real receiver with the detector paced at 2 000 frames/s (ASI Cheetah, 12 bit).
Rates are frames over the time from the first frame received to the last one handled.
The last line printed is JSON.

With --web it measures instead what the live page costs ingest (`bench_web.py`): the whole live
pipeline at full speed without the page, then with it open in headless Chromium and another
process polling /api/status at 10 Hz, `--pairs` times; its last line is JSON with the ratio.

    python tools/bench_ingest.py [--frames 20000] [--paced-frames 20000]
    python tools/bench_ingest.py --web [--frames 20000] [--pairs 6]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from simed_stream.ingest import Receiver, ReceiverSettings

SHAPE = (256, 256)
FRAMES_PER_POSITION = 4


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _start_detector(endpoint: str, frames: int, rate: str) -> subprocess.Popen:
    positions = frames // FRAMES_PER_POSITION
    nx = 100 if positions % 100 == 0 else positions
    nav = f"{positions // nx}x{nx}"
    return subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "detector", "--synthetic",
                             "--nav-shape", nav, "--sig-shape", f"{SHAPE[0]}x{SHAPE[1]}",
                             "--frames-per-position", str(FRAMES_PER_POSITION), "--batch-frames", "64",
                             "--rate", rate, "--data", endpoint, "--control", "none", "--series-id", "bench"],
                            stdout=subprocess.DEVNULL)


def raw(frames: int) -> dict:
    """Receive and discard: the ceiling ZeroMQ and Python give between two processes."""
    endpoint = _endpoint()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(endpoint)
    detector = _start_detector(endpoint, frames, "max")
    received, first = 0, None
    while True:
        parts = pull.recv_multipart(copy=False)
        header = json.loads(bytes(parts[0].buffer))
        if header["htype"] == "frames":
            first = first or time.perf_counter()
            received += header["count"]
            last = time.perf_counter()
        elif header["htype"] == "series_end":
            break
    detector.wait()
    pull.close(0)
    context.term()
    return {"frames": received, "fps": received / (last - first)}


def ingest(frames: int, rate: str) -> dict:
    endpoint = _endpoint()
    with tempfile.TemporaryDirectory() as folder:
        settings = ReceiverSettings(capture_dir=Path(folder), data_endpoint=endpoint, overview_grace_s=1.0,
                                    max_message_bytes=64 << 20)
        with Receiver(settings) as receiver:
            detector = _start_detector(endpoint, frames, rate)
            summary = receiver.wait_for_series(1, 600)[0]
            detector.wait()
            status = receiver.status()
        capture_bytes = summary.path.stat().st_size
    a = summary.accounting
    return {"frames": a["received"], "fps": a["received"] / summary.ingest_seconds,
            "dropped": a["dropped_at_source"] + a["missing"] + a["rejected"], "accounting": a,
            "capture_MB": round(capture_bytes / 1e6, 1), "rejected_messages": status["rejected_messages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--paced-frames", type=int, default=20000)
    parser.add_argument("--web", action="store_true", help="what the live page costs ingest (see above)")
    parser.add_argument("--pairs", type=int, default=6, help="with --web: runs without and with the page")
    args = parser.parse_args()
    if args.web:
        import bench_web

        return bench_web.compare(args.frames, args.pairs)
    ingest(2000, "max")  # warm up: numba's cache and the page cache, so (b) measures steady state
    ceiling = raw(args.frames)
    print(f"(a) raw transport: {ceiling['fps']:.0f} frames/s", flush=True)
    full = ingest(args.frames, "max")
    print(f"(b) full ingest:   {full['fps']:.0f} frames/s, {full['dropped']} not received", flush=True)
    paced = ingest(args.paced_frames, "2000")
    print(f"(c) paced 2000/s:  {paced['fps']:.0f} frames/s, {paced['dropped']} not received, "
          f"accounting {paced['accounting']}", flush=True)
    print(json.dumps({
        "shape": list(SHAPE), "dtype": "uint16", "frames": args.frames,
        "raw_fps": round(ceiling["fps"]), "ingest_fps": round(full["fps"]),
        "ratio": round(full["fps"] / ceiling["fps"], 3), "dropped": full["dropped"],
        "paced_2000": {"frames": args.paced_frames, "dropped": paced["dropped"], "fps": round(paced["fps"])},
        "capture_MB": full["capture_MB"],
    }))


if __name__ == "__main__":
    main()
