"""A slow or hostile client cannot make the web server hold memory without bound, nor disturb
ingest: a burst of a thousand requests while a scan streams, clients that never read (a large
file, pipelined images, the event stream), too many connections, requests or pages at once.

The server's own counters (`WebServer.stats`: what it holds, the peaks, whom it closed) are read
while the clients misbehave; deadlines are generous and nothing asserts on speed."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import pytest

from simed_stream.cli.replay import replay_capture
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import LiveSettings
from simed_stream.live.view import LiveView
from simed_stream.web.server import WebServer
from simed_stream.web.state import Limits
from simed_stream.capture_replay import capture_series

from conftest import run_with_deadline
from test_live import Detector, check_capture_complete, live_settings
from web_helpers import get, raw_connection

QUICK = Limits(stall_s=1.0, keepalive_s=1.0, tick_s=0.05)
BIG_FILE = "particles_9999.mrcs"  # a name the page links to; 64 MB


@pytest.fixture(scope="module")
def finished(scan, tiny_phaser, tmp_path_factory):
    """A replayed scan's pipeline, its series folder holding one large stack file besides."""
    out = tmp_path_factory.mktemp("web-limits") / "out"
    pipeline = replay_capture(scan, LiveSettings(out=out, model=tiny_phaser, device="cpu", batch_size=2), "max")
    (out / "scan" / BIG_FILE).write_bytes(bytes(64 << 20))
    return pipeline


def watch(server: WebServer, until, timeout_s: float = 30.0) -> list[dict]:
    """`server.stats()` every 50 ms until `until(stats)`; every sample taken."""
    samples, deadline = [], time.monotonic() + timeout_s
    while True:
        samples.append(server.stats())
        if until(samples[-1]):
            return samples
        assert time.monotonic() < deadline, samples[-1]
        time.sleep(0.05)


def closed_by_server(client, patience_s: float = 10.0) -> bool:
    """Drain what the server sent; True once it closed or reset the connection, False if it went
    quiet for `patience_s` with the connection open. The patience is generous: the server counts a
    refusal when it accepts and closes a moment later, which on a loaded machine took over 0.2 s."""
    client.settimeout(patience_s)
    try:
        while chunk := client.recv(1 << 20):
            del chunk
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


# ------------------------------------------------------------------ clients that never read

def test_a_large_file_to_a_client_that_never_reads(finished):
    with WebServer(finished.view, "127.0.0.1", 0, limits=QUICK) as server:
        client = raw_connection(server.port)
        client.sendall(f"GET /series/1/files/{BIG_FILE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        samples = watch(server, lambda s: s["cut_off"] >= 1 and s["connections"] == 0)
        assert max(s["unsent_bytes"] for s in samples) <= 4 * QUICK.file_chunk, samples
        assert closed_by_server(client)
        client.close()
        assert get(f"http://127.0.0.1:{server.port}/api/status").status == 200  # others are served


def test_pipelined_images_to_a_client_that_never_reads(finished):
    with WebServer(finished.view, "127.0.0.1", 0, limits=QUICK) as server:
        overview = get(f"http://127.0.0.1:{server.port}/api/series/1/overview.png").body
        client = raw_connection(server.port)
        request = b"GET /api/series/1/overview.png HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        client.sendall(request * 300)  # 300 answers asked for: ~150 MB
        samples = watch(server, lambda s: s["cut_off"] >= 1 and s["connections"] == 0)
        assert max(s["unsent_bytes"] for s in samples) <= 2 * len(overview) + (256 << 10), \
            (len(overview), max(s["unsent_bytes"] for s in samples))
        assert closed_by_server(client)
        client.close()


def test_an_event_stream_that_is_never_read(tmp_path):
    view = LiveView()
    padding = "x" * 100_000  # each status event ~100 kB: kernel buffers fill within a second or two
    with WebServer(view, "127.0.0.1", 0, limits=QUICK) as server:
        client = raw_connection(server.port)
        client.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        watch(server, lambda s: s["streams"] == 1)
        samples, n = [], 0
        deadline = time.monotonic() + 60
        while not samples or samples[-1]["streams"] or samples[-1]["connections"]:
            n += 1
            view.publish_status({"ingest": {"frames_per_s": n, "queue_depth": 0, "lag_s": 0.0}, "pad": padding})
            samples.append(server.stats())
            assert time.monotonic() < deadline, samples[-1]
            time.sleep(0.02)
        assert max(s["unsent_bytes"] for s in samples) <= 4 * len(padding) + (256 << 10)
        assert closed_by_server(client)
        client.close()


# ------------------------------------------------------------------ too many at once

def test_too_many_connections_are_closed_as_they_connect(finished):
    limits = Limits(max_connections=4, keepalive_s=120.0)
    with WebServer(finished.view, "127.0.0.1", 0, limits=limits) as server:
        idle = [raw_connection(server.port) for _ in range(4)]
        watch(server, lambda s: s["connections"] == 4)
        extra = raw_connection(server.port)
        watch(server, lambda s: s["refused"] == 1)
        assert closed_by_server(extra)
        for client in idle + [extra]:
            client.close()
        watch(server, lambda s: s["connections"] == 0)
        assert get(f"http://127.0.0.1:{server.port}/api/status").status == 200
        assert server.stats()["peak_connections"] == 4


def test_a_connection_that_asks_nothing_is_closed(finished):
    with WebServer(finished.view, "127.0.0.1", 0, limits=Limits(keepalive_s=0.5)) as server:
        silent = raw_connection(server.port)
        watch(server, lambda s: s["connections"] == 0 and s["peak_connections"] == 1)
        silent.settimeout(30)
        assert silent.recv(1) == b""  # closed by the server, nothing sent
        silent.close()


def test_too_many_requests_or_pages_at_once_get_503(finished):
    limits = Limits(max_requests=2, max_streams=1, stall_s=30.0)
    with WebServer(finished.view, "127.0.0.1", 0, limits=limits) as server:
        url = f"http://127.0.0.1:{server.port}"
        slow = [raw_connection(server.port) for _ in range(2)]  # two downloads that never read: both in flight
        for client in slow:
            client.sendall(f"GET /series/1/files/{BIG_FILE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        watch(server, lambda s: s["in_flight"] == 2)
        busy = get(f"{url}/api/status")
        assert busy.status == 503 and busy.headers["Retry-After"] == "1" and "too many" in busy.json()["error"]
        page = raw_connection(server.port)
        page.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        watch(server, lambda s: s["streams"] == 1)
        second = get(f"{url}/api/events")
        assert second.status == 503 and "pages are open already" in second.json()["error"]
        for client in slow + [page]:
            client.close()
        watch(server, lambda s: s["in_flight"] == 0 and s["streams"] == 0)
        assert get(f"{url}/api/status").status == 200


# ------------------------------------------------------------------ a burst while a scan streams

async def _burst(url: str, paths: list[str], requests: int, clients: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i: int) -> None:
            try:
                async with session.get(url + paths[i % len(paths)]) as answer:
                    await answer.read()
                    key = str(answer.status)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                key = "closed"
            outcomes[key] = outcomes.get(key, 0) + 1
        await asyncio.gather(*(one(i) for i in range(requests)))
    return outcomes


def test_a_thousand_requests_while_a_scan_streams(scan, tiny_phaser, tmp_path):
    from simed_stream.phasing.inference import Phaser

    settings = live_settings(tmp_path, max_series=1)
    pipeline = LivePipeline(settings, phaser=Phaser(tiny_phaser, "cpu"))
    detector = Detector(settings.data_endpoint, [capture_series(scan)], rate_fps=25)  # 50 frames in 2 s
    with WebServer(pipeline.view, "127.0.0.1", 0) as server:
        url = f"http://127.0.0.1:{server.port}"
        paths = ["/api/status", "/api/series", "/api/series/1", "/api/particles", "/api/rate", "/api/messages",
                 "/static/app.js", "/", "/api/series/1/overview.png", "/api/resolution"]
        outcomes = {}
        burst = threading.Thread(
            target=lambda: outcomes.update(asyncio.run(_burst(url, paths, 1000, 200))))
        detector.start()
        burst.start()
        results = run_with_deadline(pipeline, 60)
        burst.join(timeout=120)
        detector.join(timeout=20)
        stats = server.stats()
        assert not burst.is_alive() and sum(outcomes.values()) == 1000, outcomes
        assert set(outcomes) <= {"200", "404", "503", "closed"} and outcomes.get("200", 0) > 0, outcomes
        assert stats["peak_connections"] <= Limits().max_connections and stats["refused"] > 0, stats
        assert stats["peak_in_flight"] <= Limits().max_requests, stats
        assert get(f"{url}/api/status").json() == json.loads((settings.out / "status.json").read_text())
    # ingest untouched: every frame captured, the series phased
    check_capture_complete(next((settings.out / "captures").glob("*.h5")))
    assert [r.status for r in results] == ["phased"] and results[0].phased == results[0].picks
