"""Fan-out of classical phasing — the chain's dominant cost — to worker processes over ZeroMQ.

The pipeline binds a PUSH socket (jobs) and a PULL socket (results); workers connect to both,
so they can be local processes (`PhasingFanout(workers=N)` starts them) or processes on other
machines started with `simed phase-worker --jobs ENDPOINT --results ENDPOINT`. PUSH deals jobs
round-robin to whoever is connected; results carry the job id, so order does not matter.

Messages are a JSON header plus raw little-endian float64 arrays — no pickle: a worker never
executes what it receives, and every message size is bounded. Same arithmetic as in-process
(`classical.phase` on the same arrays), so the stack is identical whichever computes it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict

import numpy as np
import zmq

from simed_stream.phasing.classical import Geometry, HIOSettings, phase

log = logging.getLogger(__name__)
MAX_SIDE_PX = 2048
MAX_MESSAGE_BYTES = 3 * MAX_SIDE_PX * MAX_SIDE_PX * 8 + 65536


def _array_part(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def _read_array(part: bytes, shape) -> np.ndarray:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or not all(0 < v <= MAX_SIDE_PX for v in shape) or len(part) != shape[0] * shape[1] * 8:
        raise ValueError(f"array part of {len(part)} bytes does not match shape {shape}")
    return np.frombuffer(part, dtype="<f8").reshape(shape)


class PhasingFanout:
    """An executor-like pool (`map`) that runs `classical.phase` jobs on connected workers."""

    def __init__(self, workers: int = 2, jobs_endpoint: str | None = None, results_endpoint: str | None = None,
                 timeout_s: float = 600.0):
        self._tmp = tempfile.TemporaryDirectory(prefix="simed-fanout-") if jobs_endpoint is None else None
        self.jobs_endpoint = jobs_endpoint or f"ipc://{self._tmp.name}/jobs.sock"
        self.results_endpoint = results_endpoint or f"ipc://{self._tmp.name}/results.sock"
        self.timeout_s = timeout_s
        self._closed = False
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, 64)
        self.push.bind(self.jobs_endpoint)
        self.pull = self.context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.pull.bind(self.results_endpoint)
        self.processes = [subprocess.Popen([sys.executable, "-m", "simed_stream.fanout", "--jobs", self.jobs_endpoint,
                                            "--results", self.results_endpoint])
                          for _ in range(workers)]

    def __enter__(self) -> "PhasingFanout":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_workers(self) -> None:
        """Local workers that died (e.g. out of memory) would leave jobs unanswered: say so now."""
        dead = [p.returncode for p in self.processes if p.poll() is not None]
        if self.processes and len(dead) == len(self.processes):
            raise RuntimeError(f"all {len(dead)} phasing workers exited (codes {dead})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.push.close(0)
        self.pull.close(0)
        self.context.term()
        if self._tmp is not None:
            self._tmp.cleanup()

    def map(self, _function, jobs) -> list[np.ndarray]:
        """Results of `classical.phase(diffraction, image_lr, geometry, settings[, rng from seed])` per job, in order.
        (`_function` is accepted for executor compatibility; workers only ever run `phase`.)"""
        jobs = list(jobs)
        batch = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout_s
        for index, (diffraction, image_lr, geometry, settings, *seed) in enumerate(jobs):
            header = {"batch": batch, "index": index, "geometry": asdict(geometry), "settings": asdict(settings),
                      "seed": seed[0] if seed else None,
                      "diffraction_shape": list(np.shape(diffraction)), "image_lr_shape": list(np.shape(image_lr))}
            # PUSH blocks while no worker is connected: wait for room, never past the deadline
            while not self.push.poll(timeout=1000, flags=zmq.POLLOUT):
                self._check_workers()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no phasing worker took a job within {self.timeout_s:g} s")
            self.push.send_multipart([json.dumps(header).encode(), _array_part(diffraction), _array_part(image_lr)])
        results: dict[int, np.ndarray] = {}
        while len(results) < len(jobs):
            self._check_workers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(jobs) - len(results)} phasing job(s) unanswered after {self.timeout_s:g} s")
            if not self.pull.poll(timeout=1000):
                continue
            parts = self.pull.recv_multipart()
            try:
                header = json.loads(parts[0])
                if header.get("batch") != batch:  # a late answer to an abandoned batch
                    continue
                if "error" in header:
                    raise RuntimeError(f"phasing worker failed: {header['error']}")
                results[int(header["index"])] = _read_array(parts[1], header["shape"]).copy()
            except (ValueError, KeyError, IndexError) as error:
                log.error("malformed phasing result ignored: %s", error)
        return [results[i] for i in range(len(jobs))]


def serve(jobs_endpoint: str, results_endpoint: str) -> None:
    """A worker: phase every job received until terminated."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    pull.connect(jobs_endpoint)
    push = context.socket(zmq.PUSH)
    push.connect(results_endpoint)
    while True:
        parts = pull.recv_multipart()
        header: dict = {}
        try:
            header = json.loads(parts[0])
            geometry = Geometry(**header["geometry"])
            settings = HIOSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in header["settings"].items()})
            diffraction = _read_array(parts[1], header["diffraction_shape"])
            image_lr = _read_array(parts[2], header["image_lr_shape"])
            seed = header.get("seed")
            if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
                raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
            rng = None if seed is None else np.random.default_rng(seed)
            result = phase(diffraction, image_lr, geometry, settings, rng)
            reply = {"batch": header["batch"], "index": header["index"], "shape": list(result.shape)}
            push.send_multipart([json.dumps(reply).encode(), _array_part(result)])
        except Exception as error:  # a bad job gets an error answer; the worker carries on
            answer = {"batch": header.get("batch"), "index": header.get("index"), "error": str(error)[:500]}
            push.send_multipart([json.dumps(answer).encode()])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="simed phase-worker", description="Classical phasing worker (ZeroMQ).")
    parser.add_argument("--jobs", required=True, help="the pipeline's jobs endpoint (PUSH side)")
    parser.add_argument("--results", required=True, help="the pipeline's results endpoint (PULL side)")
    args = parser.parse_args(argv)
    try:
        serve(args.jobs, args.results)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
