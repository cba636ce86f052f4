"""CURVE on the ZeroMQ links that can leave the machine (docs/security.md), over real sockets:
keys made by `simed keys`; with them a series and a fan-out batch go through whole; a peer
without the right key gets nothing in and nothing out; an endpoint beyond loopback without keys
is refused unless the operator says insecure, which is logged."""

import logging
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zmq
import zmq.auth

from simed_stream import links
from simed_stream.cli import main
from simed_stream.detectors.simed.fake import FakeDetector
from simed_stream.errors import LinkError
from simed_stream.fanout import PhasingFanout
from simed_stream.ingest import Receiver, ReceiverSettings
from simed_stream.keys import load_secret
from simed_stream.phasing.engine import PhaseRetrievalEngine
from simulator.synthetic import synthetic_series

from test_engine import GEOMETRY, SETTINGS, toy_particle
from test_ingest import SMALL, check_accounting, expected_frames, free_endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path):
    """Key pairs made by `simed keys`, and one authorized-keys folder per server holding its
    clients' public keys: the detector admits the receiver, the pipeline admits worker-1."""
    folder = tmp_path / "keys"
    for name in ("detector", "receiver", "pipeline", "worker-1", "rogue"):
        assert main(["-q", "keys", name, "--dir", str(folder)]) == 0
    for server, clients in (("detector", ["receiver"]), ("pipeline", ["worker-1"])):
        (folder / f"{server}-authorized").mkdir()
        for client in clients:
            (folder / f"{server}-authorized" / f"{client}.key").write_bytes((folder / f"{client}.key").read_bytes())
    return folder


def server(keys, name):
    return links.LinkSecurity(secret_key=keys / f"{name}.key_secret", authorized_keys=keys / f"{name}-authorized")


def client(keys, name, server_name):
    return links.LinkSecurity(secret_key=keys / f"{name}.key_secret", server_key=keys / f"{server_name}.key")


def test_simed_keys_writes_a_pair_only_its_owner_can_read(keys, capsys):
    secret, public = keys / "detector.key_secret", keys / "detector.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(public)[1] is None  # the public file holds no secret
    assert load_secret(secret)[0] == zmq.auth.load_certificate(public)[0]
    assert main(["-q", "keys", "detector", "--dir", str(keys)]) == 2  # never overwritten
    assert "exists: keys are never overwritten" in capsys.readouterr().err
    secret.chmod(0o644)
    with pytest.raises(LinkError, match="can be read by others: chmod 600"):
        load_secret(secret)
    with pytest.raises(LinkError, match="holds no secret key"):
        load_secret(public)


def test_a_series_over_curve_arrives_whole(keys, tmp_path):
    endpoint = free_endpoint()
    settings = ReceiverSettings(capture_dir=tmp_path / "captures", data_endpoint=endpoint, overview_grace_s=0.5,
                                security=client(keys, "receiver", "detector"))
    with Receiver(settings) as rx:
        with FakeDetector(endpoint, None, rate_fps="max", security=server(keys, "detector")) as detector:
            report = detector.run([synthetic_series("sealed", **SMALL)])
        summary = rx.wait_for_series(1, 30)[0]
    assert summary.accounting["received"] == 128 and summary.end_status == "complete"
    check_accounting(summary, report)
    truth = expected_frames()
    from simed_stream.capture import CaptureReader

    with CaptureReader(summary.path) as capture:
        for frame_id, pixels in enumerate(capture.frames(range(128))):
            np.testing.assert_array_equal(pixels, truth[frame_id])


def _pull(context, endpoint, security=None):
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    links.connect(pull, endpoint, security)
    return pull


def test_a_receiver_without_the_right_key_gets_nothing_out(keys, tmp_path, caplog):
    """Two eavesdroppers connect before the series: one with keys the detector does not know,
    one without keys. The detector deals to authorized receivers only: they get nothing, the
    real receiver everything."""
    caplog.set_level(logging.WARNING)
    endpoint = free_endpoint()
    context = zmq.Context()
    settings = ReceiverSettings(capture_dir=tmp_path / "captures", data_endpoint=endpoint, overview_grace_s=0.5,
                                security=client(keys, "receiver", "detector"))
    with FakeDetector(endpoint, None, rate_fps="max", security=server(keys, "detector")) as detector:
        rogues = [_pull(context, endpoint, client(keys, "rogue", "detector")), _pull(context, endpoint)]
        threading.Event().wait(0.5)  # their handshakes are tried (and refused) before the series
        with Receiver(settings) as rx:
            report = detector.run([synthetic_series("private", **SMALL)])
            summary = rx.wait_for_series(1, 30)[0]
        overheard = [rogue.poll(500) for rogue in rogues]
    for rogue in rogues:
        rogue.close(0)
    context.term()
    assert overheard == [0, 0]
    check_accounting(summary, report)
    assert summary.accounting["received"] == 128
    assert any("refused a CURVE client" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("impostor", ["wrong key", "no key"])
def test_a_sender_without_the_right_key_gets_nothing_in(keys, tmp_path, caplog, impostor):
    """A detector that is not the one whose public key the receiver holds (its own pair, or
    none) finds no receiver: it cannot send a single message, and the receiver logs why."""
    caplog.set_level(logging.WARNING)
    endpoint = free_endpoint()
    settings = ReceiverSettings(capture_dir=tmp_path / "captures", data_endpoint=endpoint,
                                security=client(keys, "receiver", "detector"))
    # the impostor even trusts our receiver's key: it is the receiver that refuses it
    impostor_keys = links.LinkSecurity(secret_key=keys / "rogue.key_secret",
                                       authorized_keys=keys / "detector-authorized") if impostor == "wrong key" else None
    with Receiver(settings) as rx:
        with FakeDetector(endpoint, None, rate_fps="max", peer_timeout_s=3.0, security=impostor_keys) as detector:
            with pytest.raises(TimeoutError, match="no receiver connected"):
                detector.run([synthetic_series("forged", **SMALL)])
        status = rx.status()
    assert status["messages"] == 0 and status["frames_received"] == 0 and status["open_series"] == {}
    assert any("CURVE handshake with" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


def test_beyond_loopback_without_keys_is_refused_unless_insecure(tmp_path, caplog):
    assert links.is_local("ipc:///tmp/x") and links.is_local("tcp://127.0.0.1:1") and links.is_local("tcp://[::1]:1")
    assert links.is_local("tcp://localhost:1") and links.is_local("tcp://listen@127.0.0.1:8088")
    for reachable in ("tcp://0.0.0.0:1", "tcp://*:1", "tcp://192.0.2.1:1", "tcp://eth0:1", "tcp://detector-pc:1",
                      "tcp://127.0.0.1;192.0.2.1:1", "tcp://listen@0.0.0.0:8088"):
        assert not links.is_local(reachable), reachable
    port = free_port()
    # connect (the receiver) …
    far = ReceiverSettings(capture_dir=tmp_path / "c", data_endpoint="tcp://192.0.2.1:31001")
    with pytest.raises(LinkError, match="refusing to connect to tcp://192.0.2.1:31001 without keys"):
        Receiver(far).start()
    with pytest.raises(LinkError, match="needs both secret_key and server_key"):
        Receiver(far.model_copy(update={"security": links.LinkSecurity(secret_key=tmp_path / "x")})).start()
    # … and bind (the detector, the fan-out, the receiver's overview endpoint)
    with pytest.raises(LinkError, match=f"refusing to bind tcp://0.0.0.0:{port} without keys"):
        FakeDetector(f"tcp://0.0.0.0:{port}", None).__enter__()
    with pytest.raises(LinkError, match="refusing to bind"):
        PhasingFanout(0, f"tcp://0.0.0.0:{port}", f"tcp://0.0.0.0:{free_port()}")
    overview = ReceiverSettings(capture_dir=tmp_path / "o", data_endpoint=free_endpoint(),
                                overview={"endpoint": f"tcp://0.0.0.0:{port}"})
    with pytest.raises(LinkError, match="refusing to bind"):
        Receiver(overview).start()
    cli = subprocess.run([sys.executable, "-m", "simed_stream.cli", "detector", "--synthetic", "--data",
                          f"tcp://0.0.0.0:{port}", "--control", "none"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "refusing to bind" in cli.stderr and "Traceback" not in cli.stderr
    # the operator's word: allowed, and said loudly
    caplog.set_level(logging.WARNING)
    with Receiver(far.model_copy(update={"security": links.LinkSecurity(insecure=True)})):
        pass
    assert any(r.levelno == logging.WARNING and "INSECURE: connect to tcp://192.0.2.1:31001" in r.getMessage()
               for r in caplog.records)


def _expected(count):
    toys = [toy_particle(seed) for seed in range(count)]
    diffractions, images = np.stack([t[0] for t in toys]), np.stack([t[1] for t in toys])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker runs it: one particle, one thread
    try:
        engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
        return diffractions, images, [engine(diffractions[i:i + 1], images[i:i + 1]) for i in range(count)]
    finally:
        torch.set_num_threads(threads)


def _worker(keys, name, jobs, results):
    return subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "-q", "phase-worker", "--jobs", jobs,
                             "--results", results, "--secret-key", str(keys / f"{name}.key_secret"),
                             "--server-key", str(keys / "pipeline.key")])


def test_the_fanout_deals_to_authorized_workers_only(keys):
    diffractions, images, expected = _expected(2)
    jobs, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    workers = [_worker(keys, "rogue", jobs, results)]
    try:
        with PhasingFanout(0, jobs, results, timeout_s=3.0, security=server(keys, "pipeline")) as fanout:
            deadline = time.monotonic() + 90  # the worker starts (imports torch) slowly on a busy machine
            while fanout.guard.refused < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert fanout.guard.refused >= 1  # the rogue tried, and was turned away
            with pytest.raises(TimeoutError, match="no phasing worker took a job"):  # the rogue alone
                fanout(SETTINGS, GEOMETRY, diffractions, images)
            workers.append(_worker(keys, "worker-1", jobs, results))
            fanout.timeout_s = 120.0
            result = fanout(SETTINGS, GEOMETRY, diffractions, images)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(10)
    for i in range(2):
        np.testing.assert_array_equal(result.sigma_v[i], expected[i].sigma_v[0])
        assert result.r_free[i] == expected[i].r_free[0]


def test_local_workers_use_the_pipelines_own_keys(keys):
    diffractions, images, expected = _expected(1)
    jobs, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with PhasingFanout(1, jobs, results, timeout_s=120.0, security=server(keys, "pipeline")) as fanout:
        result = fanout(SETTINGS, GEOMETRY, diffractions, images)
        assert fanout.guard.refused == 0
    np.testing.assert_array_equal(result.sigma_v[0], expected[0].sigma_v[0])


def _ask(context, endpoint, security=None) -> dict | None:
    """One control request; None when no answer comes within half a second."""
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    links.connect(req, endpoint, security)
    req.send(b'{"command": "status"}')
    answer = req.recv_json() if req.poll(500) else None
    req.close(0)
    return answer


def test_the_control_link_answers_authorized_clients_only(keys):
    """The detector's REP control socket sits behind the same guard as its data: a client without
    keys, or with keys the detector does not know, gets no answer (and cannot arm or abort)."""
    control = free_endpoint()
    context = zmq.Context()
    try:
        with FakeDetector(free_endpoint(), control, security=server(keys, "detector")):
            assert _ask(context, control) is None
            assert _ask(context, control, client(keys, "rogue", "detector")) is None
            answer = _ask(context, control, client(keys, "receiver", "detector"))
    finally:
        context.term()
    assert answer is not None and answer["ok"] is True


def test_one_set_of_keys_serves_a_whole_pipeline(keys):
    """A pipeline's keys for its detector (secret_key, server_key) leave its private fan-out plain
    on this machine; binding beyond it with a key pair but no authorized_keys is refused."""
    security = client(keys, "receiver", "detector")
    with PhasingFanout(0, security=security) as fanout:
        assert fanout.guard is None and fanout.jobs_endpoint.startswith("ipc://")
    with pytest.raises(LinkError, match="needs authorized_keys too"):
        PhasingFanout(0, f"tcp://0.0.0.0:{free_port()}", f"tcp://0.0.0.0:{free_port()}", security=security)
