"""Fan-out of the phase-retrieval engine — the chain's dominant cost — to worker processes over ZeroMQ.

The pipeline binds a PUSH socket (jobs) and a PULL socket (results); workers connect to both,
so they can be local processes (`PhasingFanout(workers=N)` starts them) or processes on other
machines started with `simed phase-worker --jobs ENDPOINT --results ENDPOINT`. PUSH deals jobs
round-robin to whoever is connected; results carry the job id, so order does not matter. A job
is one particle; the network, if the phaser has one, runs in the pipeline on the gathered batch.

Messages (`fanout_messages.py`) are a JSON header plus raw little-endian float64 arrays — no
pickle: a worker never executes what it receives, and every message size is bounded. Each
worker runs the engine on one thread with the settings the job names, so a particle's result
equals the in-process engine's for that particle alone.

Beyond this machine the two sockets are CURVE links (`links.py`): the pipeline binds them as
the server with its key pair and admits the workers in `authorized_keys`; a worker connects with
its own pair and the pipeline's public key. Local workers use the pipeline's own pair.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict

import numpy as np
import zmq

from simed_stream import links
from simed_stream.fanout_messages import (IMAGES, MAX_MESSAGE_BYTES, SCALARS, FanoutMessageError, Result,
                                          decode_job, decode_result, encode_error, encode_job, encode_result,
                                          read_header)
from simed_stream.phasing.classical import Geometry
from simed_stream.phasing.engine import EngineResult, EngineSettings, PhaseRetrievalEngine

log = logging.getLogger(__name__)
_ENGINES_KEPT = 4  # a worker's engines, one per (geometry, settings) seen most recently


class PhasingFanout:
    """Runs the engine on connected workers: `fanout(settings, geometry, diffractions, images_lr)`
    returns the `EngineResult` the in-process engine would, one particle per job."""

    def __init__(self, workers: int = 2, jobs_endpoint: str | None = None, results_endpoint: str | None = None,
                 timeout_s: float = 600.0, security: links.LinkSecurity | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="simed-fanout-") if jobs_endpoint is None else None
        self.jobs_endpoint = jobs_endpoint or f"ipc://{self._tmp.name}/jobs.sock"
        self.results_endpoint = results_endpoint or f"ipc://{self._tmp.name}/results.sock"
        self.timeout_s = timeout_s
        self._closed = False
        self.context = zmq.Context()
        self.processes: list[subprocess.Popen] = []
        self.push = self.pull = self.guard = None
        try:
            self.guard = links.server_guard(self.context, security)
            self.push = self.context.socket(zmq.PUSH)
            self.push.setsockopt(zmq.LINGER, 0)
            self.push.setsockopt(zmq.SNDHWM, 64)
            links.bind(self.push, self.jobs_endpoint, security, self.guard)
            self.pull = self.context.socket(zmq.PULL)
            self.pull.setsockopt(zmq.LINGER, 0)
            self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            links.bind(self.pull, self.results_endpoint, security, self.guard)
        except BaseException:
            self.close()
            raise
        keys = [] if self.guard is None else ["--secret-key", str(security.secret_key),  # our own pair
                                              "--server-key", str(security.secret_key)]
        self.processes = [subprocess.Popen([sys.executable, "-m", "simed_stream.fanout", "--jobs", self.jobs_endpoint,
                                            "--results", self.results_endpoint, *keys])
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
        for socket in (self.push, self.pull):
            if socket is not None:
                socket.close(0)
        if self.guard is not None:  # its socket lives in our context
            self.guard.stop()
        self.context.term()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __call__(self, settings: EngineSettings, geometry: Geometry, diffractions, images_lr) -> EngineResult:
        batch = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout_s
        count = len(diffractions)
        for index in range(count):
            # PUSH blocks while no worker is connected: wait for room, never past the deadline
            while not self.push.poll(timeout=1000, flags=zmq.POLLOUT):
                self._check_workers()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no phasing worker took a job within {self.timeout_s:g} s")
            self.push.send_multipart(encode_job(batch, index, geometry.__dict__, settings.to_json(),
                                                diffractions[index], images_lr[index]))
        replies: dict[int, Result] = {}
        while len(replies) < count:
            self._check_workers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count - len(replies)} phasing job(s) unanswered after {self.timeout_s:g} s")
            if not self.pull.poll(timeout=1000):
                continue
            try:
                reply = decode_result(self.pull.recv_multipart())
            except FanoutMessageError as error:
                log.error("malformed phasing result ignored: %s", error)
                continue
            if reply.batch != batch or reply.index >= count:  # a late answer to an abandoned batch
                continue
            if reply.error is not None:
                raise RuntimeError(f"phasing worker failed: {reply.error}")
            replies[reply.index] = reply
        return _assemble([replies[i] for i in range(count)], geometry)


def _assemble(replies: list[Result], geometry: Geometry) -> EngineResult:
    rings = max(len(reply.prtf or []) for reply in replies) or 1
    result = EngineResult.empty(len(replies), geometry, rings)
    for row, reply in enumerate(replies):
        result.flags[row] = reply.flag
        if reply.flag:
            continue
        for name, image in zip(IMAGES, reply.images):
            getattr(result, name)[row] = image
        for name in SCALARS:
            getattr(result, name)[row] = reply.scalars[name]
        result.prtf[row, : len(reply.prtf)] = reply.prtf
    return result


def _phase(engines: OrderedDict, parts: list) -> list[bytes]:
    """A worker's answer to one job: its result, or an error saying why there is none."""
    job = decode_job(parts)
    key = json.dumps([job.geometry, job.settings], sort_keys=True)
    engine = engines.pop(key, None) or PhaseRetrievalEngine(Geometry(**job.geometry),
                                                            EngineSettings.from_json(job.settings), "cpu")
    engines[key] = engine  # the most recent last; the oldest goes beyond the bound
    while len(engines) > _ENGINES_KEPT:
        engines.popitem(last=False)
    found = engine(job.diffraction[None], job.image_lr[None])
    if found.flags[0]:
        return encode_result(job.batch, job.index, found.flags[0])
    return encode_result(job.batch, job.index, None, {name: float(getattr(found, name)[0]) for name in SCALARS},
                         np.nan_to_num(found.prtf[0], nan=0.0).tolist(),
                         tuple(getattr(found, name)[0] for name in IMAGES))


def serve(jobs_endpoint: str, results_endpoint: str, security: links.LinkSecurity | None = None) -> None:
    """A worker: phase every job received until terminated (one thread: one worker per core)."""
    import torch

    torch.set_num_threads(1)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    links.connect(pull, jobs_endpoint, security)
    push = context.socket(zmq.PUSH)
    links.connect(push, results_endpoint, security)
    engines: OrderedDict[str, PhaseRetrievalEngine] = OrderedDict()
    while True:
        parts = pull.recv_multipart()
        try:
            answer = _phase(engines, parts)
        except Exception as error:  # a bad job gets an error answer when it can be attributed; the worker goes on
            try:
                header = read_header(parts)
            except FanoutMessageError:
                log.error("phasing job ignored, not even its batch is readable: %s", error)
                continue
            answer = encode_error(header["batch"], header["index"], str(error) or error.__class__.__name__)
        push.send_multipart(answer)


def main(argv: list[str] | None = None) -> int:
    """A local worker, started by `PhasingFanout` (`simed phase-worker` is the command for others)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m simed_stream.fanout", description="Phase-retrieval worker.")
    parser.add_argument("--jobs", required=True, help="the pipeline's jobs endpoint (PUSH side)")
    parser.add_argument("--results", required=True, help="the pipeline's results endpoint (PULL side)")
    parser.add_argument("--secret-key", type=Path, default=None)
    parser.add_argument("--server-key", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        serve(args.jobs, args.results, links.LinkSecurity(secret_key=args.secret_key, server_key=args.server_key))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
