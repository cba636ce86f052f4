"""Benchmark live ingest per source, against simed-stream/1 in the same run.

A simulated detector runs in its own process (`simed detector --synthetic --source S`),
streaming 256×256 uint16 frames (simed-stream/1 in batches of 64; DECTRIS, Merlin and Serval
one frame a message, as those detectors send them). In the same run:
  (a) raw: receive and discard simed-stream/1 messages (the transport's ceiling),
  (b) ingest through each source's adapter — receive, decode, place on the scan, validate, sum
      and centre per position, compress, capture — as fast as the detector sends,
  (c) paced: the same with the detector paced at 2 000 frames/s (ASI Cheetah, 12 bit).
Rates are frames over the time from the first frame received to the last one handled. One JSON
line per source; `ratio_to_simed` is its ingest rate over simed-stream/1's (goal ≥ 0.8).

    python tools/bench_ingest.py [--source simed,dectris,merlin,serval] [--frames 20000] [--paced-frames 20000]

With --web it measures instead what the live page costs ingest (`bench_web.py`): the whole live
pipeline at full speed without the page, then with it open in headless Chromium and another
process polling /api/status at 10 Hz, `--pairs` times; its last line is JSON with the ratio.

    python tools/bench_ingest.py --web [--frames 20000] [--pairs 6]
"""

from __future__ import annotations

import argparse
import json
import os
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
SOURCES = ("simed", "dectris", "merlin", "serval")


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _nav(frames: int) -> tuple[int, int]:
    positions = frames // FRAMES_PER_POSITION
    nx = 100 if positions % 100 == 0 else positions
    return positions // nx, nx


def _start_detector(source: str, endpoint: str, frames: int, rate: str) -> subprocess.Popen:
    ny, nx = _nav(frames)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # bitshuffle's OpenMP, in the DECTRIS simulator
    return subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "detector", "--synthetic",
                             "--source", source, "--nav-shape", f"{ny}x{nx}", "--sig-shape", f"{SHAPE[0]}x{SHAPE[1]}",
                             "--frames-per-position", str(FRAMES_PER_POSITION), "--batch-frames", "64",
                             "--rate", rate, "--data", endpoint, "--control", "none", "--series-id", "bench"],
                            stdout=subprocess.DEVNULL, env=env)


def raw(frames: int) -> dict:
    """Receive and discard: the ceiling ZeroMQ and Python give between two processes."""
    endpoint = _endpoint()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(endpoint)
    detector = _start_detector("simed", endpoint, frames, "max")
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


def ingest(source: str, frames: int, rate: str) -> dict:
    endpoint = _endpoint()
    with tempfile.TemporaryDirectory() as folder:
        scan = {} if source == "simed" else {"scan": {"shape": _nav(frames),
                                                      "frames_per_position": FRAMES_PER_POSITION}}
        settings = ReceiverSettings(capture_dir=Path(folder), source=source, data_endpoint=endpoint,
                                    overview_grace_s=1.0, max_message_bytes=64 << 20, **scan)
        with Receiver(settings) as receiver:
            detector = _start_detector(source, endpoint, frames, rate)
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
    parser.add_argument("--source", default=",".join(SOURCES), help="comma-separated; simed always runs (the baseline)")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--paced-frames", type=int, default=20000)
    parser.add_argument("--web", action="store_true", help="what the live page costs ingest (see above)")
    parser.add_argument("--pairs", type=int, default=6, help="with --web: runs without and with the page")
    args = parser.parse_args()
    if args.web:
        import bench_web

        return bench_web.compare(args.frames, args.pairs)
    sources = ["simed"] + [s for s in args.source.split(",") if s and s != "simed"]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}")
    for source in sources:  # warm up: numba's cache, the page cache, each adapter's imports
        ingest(source, 2000, "max")
    ceiling = raw(args.frames)
    print(f"(a) raw transport: {ceiling['fps']:.0f} frames/s", flush=True)
    baseline = None
    for source in sources:
        full = ingest(source, args.frames, "max")
        baseline = baseline or full["fps"]
        paced = ingest(source, args.paced_frames, "2000")
        print(f"{source}: (b) full ingest {full['fps']:.0f} frames/s, {full['dropped']} not received; "
              f"(c) paced 2000/s: {paced['dropped']} not received", flush=True)
        line = {"source": source, "shape": list(SHAPE), "dtype": "uint16", "frames": args.frames,
                "ingest_fps": round(full["fps"]), "ratio_to_simed": round(full["fps"] / baseline, 3),
                "dropped": full["dropped"], "rejected_messages": full["rejected_messages"],
                "paced_2000": {"frames": args.paced_frames, "dropped": paced["dropped"], "fps": round(paced["fps"])},
                "capture_MB": full["capture_MB"]}
        if source == "simed":
            line |= {"raw_fps": round(ceiling["fps"]), "ratio_to_raw": round(full["fps"] / ceiling["fps"], 3)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
