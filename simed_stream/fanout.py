"""Fan-out of the phase-retrieval engine — the chain's dominant cost — to worker processes over ZeroMQ.

The pipeline binds a PUSH socket (jobs) and a PULL socket (results); workers connect to both,
so they can be local processes (`PhasingFanout(workers=N)` starts them) or processes on other
machines started with `simed phase-worker --jobs ENDPOINT --results ENDPOINT`. PUSH deals jobs
round-robin to whoever is connected; results carry the job id, so order does not matter. A job
is one particle; the network, if the phaser has one, runs in the pipeline on the gathered batch.

Messages are a JSON header plus raw little-endian float64 arrays — no pickle: a worker never
executes what it receives, and every message size is bounded. Each worker runs the engine on
one thread with the settings the job names, so a particle's result equals the in-process
engine's for that particle alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import zmq

from simed_stream.phasing.classical import Geometry
from simed_stream.phasing.engine import EngineResult, EngineSettings, PhaseRetrievalEngine

log = logging.getLogger(__name__)
MAX_SIDE_PX = 2048
MAX_MESSAGE_BYTES = 3 * MAX_SIDE_PX * MAX_SIDE_PX * 8 + 65536
#: what a worker sends back per particle, as arrays (the rest travels in the JSON header)
IMAGES = ("sigma_v", "best", "spread")
SCALARS = ("r_free", "r_work", "resolution_A", "searches")


def _array_part(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def _read_array(part: bytes, shape) -> np.ndarray:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or not all(0 < v <= MAX_SIDE_PX for v in shape) or len(part) != shape[0] * shape[1] * 8:
        raise ValueError(f"array part of {len(part)} bytes does not match shape {shape}")
    return np.frombuffer(part, dtype="<f8").reshape(shape)


class PhasingFanout:
    """Runs the engine on connected workers: `fanout(settings, geometry, diffractions, images_lr)`
    returns the `EngineResult` the in-process engine would, one particle per job."""

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

    def __call__(self, settings: EngineSettings, geometry: Geometry, diffractions, images_lr) -> EngineResult:
        batch = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout_s
        count = len(diffractions)
        for index in range(count):
            header = {"batch": batch, "index": index, "geometry": geometry.__dict__, "settings": settings.to_json(),
                      "diffraction_shape": list(np.shape(diffractions[index])),
                      "image_lr_shape": list(np.shape(images_lr[index]))}
            # PUSH blocks while no worker is connected: wait for room, never past the deadline
            while not self.push.poll(timeout=1000, flags=zmq.POLLOUT):
                self._check_workers()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no phasing worker took a job within {self.timeout_s:g} s")
            self.push.send_multipart([json.dumps(header).encode(), _array_part(diffractions[index]),
                                      _array_part(images_lr[index])])
        replies: dict[int, tuple[dict, list[np.ndarray]]] = {}
        while len(replies) < count:
            self._check_workers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count - len(replies)} phasing job(s) unanswered after {self.timeout_s:g} s")
            if not self.pull.poll(timeout=1000):
                continue
            parts = self.pull.recv_multipart()
            try:
                header = json.loads(parts[0])
                if header.get("batch") != batch:  # a late answer to an abandoned batch
                    continue
                if "error" in header:
                    raise RuntimeError(f"phasing worker failed: {header['error']}")
                images = [] if header["flag"] else [_read_array(p, header["shape"]) for p in parts[1:4]]
                replies[int(header["index"])] = (header, images)
            except (ValueError, KeyError, IndexError, TypeError) as error:
                log.error("malformed phasing result ignored: %s", error)
        return _assemble([replies[i] for i in range(count)], geometry)


def _assemble(replies: list[tuple[dict, list[np.ndarray]]], geometry: Geometry) -> EngineResult:
    rings = max(len(header.get("prtf") or []) for header, _ in replies) or 1
    result = EngineResult.empty(len(replies), geometry, rings)
    for row, (header, images) in enumerate(replies):
        result.flags[row] = header["flag"]
        if header["flag"]:
            continue
        for name, image in zip(IMAGES, images):
            getattr(result, name)[row] = image
        for name in SCALARS:
            getattr(result, name)[row] = header[name]
        result.prtf[row, : len(header["prtf"])] = header["prtf"]
    return result


def serve(jobs_endpoint: str, results_endpoint: str) -> None:
    """A worker: phase every job received until terminated (one thread: one worker per core)."""
    import torch

    torch.set_num_threads(1)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    pull.connect(jobs_endpoint)
    push = context.socket(zmq.PUSH)
    push.connect(results_endpoint)
    engines: dict[str, PhaseRetrievalEngine] = {}  # one per (geometry, settings) seen
    while True:
        parts = pull.recv_multipart()
        header: dict = {}
        try:
            header = json.loads(parts[0])
            key = json.dumps([header["geometry"], header["settings"]], sort_keys=True)
            if key not in engines:
                engines[key] = PhaseRetrievalEngine(Geometry(**header["geometry"]),
                                                    EngineSettings.from_json(header["settings"]), "cpu")
            diffraction = _read_array(parts[1], header["diffraction_shape"])
            image_lr = _read_array(parts[2], header["image_lr_shape"])
            found = engines[key](diffraction[None], image_lr[None])
            reply = {"batch": header["batch"], "index": header["index"], "flag": found.flags[0]}
            arrays = []
            if not found.flags[0]:
                reply.update({name: float(getattr(found, name)[0]) for name in SCALARS},
                             shape=list(found.sigma_v.shape[1:]), prtf=np.nan_to_num(found.prtf[0], nan=0.0).tolist())
                arrays = [_array_part(getattr(found, name)[0]) for name in IMAGES]
            push.send_multipart([json.dumps(reply).encode(), *arrays])
        except Exception as error:  # a bad job gets an error answer; the worker carries on
            answer = {"batch": header.get("batch"), "index": header.get("index"), "error": str(error)[:500]}
            push.send_multipart([json.dumps(answer).encode()])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="simed phase-worker", description="Phase-retrieval worker (ZeroMQ).")
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
