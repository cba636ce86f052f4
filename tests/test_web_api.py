"""The live page's JSON API, every endpoint, against what the pipeline wrote to disk.

One real live run (fake detector with rejected messages → receiver → LivePipeline with the
tiny phaser) is served by a real WebServer on loopback; each answer is compared with an
independent reference: status.json, result.json, picks.json, the STAR and .mrcs stack, the
capture, and the warnings the run logged."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from statistics import median

import mrcfile
import numpy as np
import pytest
import starfile
from PIL import Image

from simed_stream.capture import CaptureReader
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import WebOptions
from simed_stream.web.launch import access_token, serving
from simed_stream.web.routes import API
from simed_stream.web.server import WebServer
from simed_stream.capture_replay import capture_series

from conftest import run_with_deadline
from test_live import Detector, live_settings
from web_helpers import get, get_json, read_events

FAULTS = "wrong_shape=0.6"  # seeded: the first of the two frames messages rejected — warnings, incomplete
# positions, flagged picks (and the particles of the second message phased)


class Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def run(scan, tiny_phaser, tmp_path_factory):
    from simed_stream.phasing.inference import Phaser

    tmp = tmp_path_factory.mktemp("web-api")
    settings = live_settings(tmp, max_series=1)
    pipeline = LivePipeline(settings, phaser=Phaser(tiny_phaser, "cpu"))
    collector = Collector()
    logging.getLogger("simed_stream").addHandler(collector)
    try:
        detector = Detector(settings.data_endpoint, [capture_series(scan)], FAULTS)
        detector.start()
        run_with_deadline(pipeline, 60)
        detector.join(timeout=20)
    finally:
        logging.getLogger("simed_stream").removeHandler(collector)
    assert detector.error is None, detector.error
    series_dir = settings.out / "scan"
    return {"pipeline": pipeline, "out": settings.out, "series_dir": series_dir, "warnings": collector.records,
            "capture": next((settings.out / "captures").glob("*.h5")),
            "result": json.loads((series_dir / "result.json").read_text()),
            "picks": json.loads((series_dir / "picks.json").read_text()),
            "star": starfile.read(series_dir / "particles.star", always_dict=True)["particles"]}


@pytest.fixture(scope="module")
def url(run):
    with WebServer(run["pipeline"].view, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.port}"


def png_array(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image, np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ------------------------------------------------------------------ the run itself (so the tests below can fail)

def test_the_run_has_phased_and_flagged_particles_and_warnings(run):
    result = run["result"]
    assert result["phased"] >= 1 and sum(result["flagged"].values()) >= 1, result
    assert result["accounting"]["rejected"] > 0 and run["warnings"]


# ------------------------------------------------------------------ every endpoint

def test_status_is_status_json(run, url):
    assert get_json(f"{url}/api/status") == json.loads((run["out"] / "status.json").read_text())


def test_series_list_agrees_with_result_json_star_and_capture(run, url):
    (series,) = get_json(f"{url}/api/series")["series"]
    result = run["result"]
    assert (series["series_id"], series["state"], series["status"], series["folder"]) == \
        ("scan", "done", result["status"], "scan")
    assert (series["picks"], series["phased"], series["flagged"], series["pending"]) == \
        (result["picks"], result["phased"], sum(result["flagged"].values()), 0)
    assert series["flag_reasons"] == result["flagged"]
    assert series["accounting"] == result["accounting"]
    with CaptureReader(run["capture"]) as capture:
        valid = capture.file["positions/valid"][:]
        nav_shape = list(capture.file["positions/valid"].shape)
    assert series["positions"] == {"total": valid.size, "valid": int(valid.sum()), "incomplete": int((~valid).sum())}
    assert series["nav_shape"] == [5, 5] and valid.size == 25, nav_shape
    resolutions = run["star"]["simedResolutionEstimateA"]
    assert series["resolution_A"]["median"] == pytest.approx(median(resolutions), rel=1e-6)
    assert series["resolution_A"]["best"] == pytest.approx(resolutions.min(), rel=1e-6)
    on_disk = sorted(p.name for p in run["series_dir"].iterdir() if not p.name.startswith("."))
    assert [f["name"] for f in series["files"]] == on_disk
    assert {"particles.star", "report.png", "picks.json", "result.json"} <= set(on_disk)


def test_series_detail_coverage_map_and_picks(run, url):
    detail = get_json(f"{url}/api/series/1")
    with CaptureReader(run["capture"]) as capture:
        valid = capture.file["positions/valid"][:].ravel()
    assert detail["coverage"] == "".join("1" if v else "2" for v in valid)
    assert "0" not in detail["coverage"] and "2" in detail["coverage"]
    picks = {p["pick"]: p for p in run["picks"]}
    assert sorted(p["index"] for p in detail["picks_list"]) == sorted(picks)
    for shown in detail["picks_list"]:
        written = picks[shown["index"]]
        assert (shown["y"], shown["x"]) == pytest.approx((written["y_px"], written["x_px"]), abs=0.01)
        assert shown["state"] == ("flagged" if written["flag"] else "phased")
        assert shown["reason"] == written["flag"]
        assert (shown["key"] is None) == bool(written["flag"])


def test_overview_png_is_the_captured_overview(run, url):
    detail = get_json(f"{url}/api/series/1")
    answer = get(f"{url}{detail['overview']['url']}")
    assert answer.status == 200 and answer.headers["Content-Type"] == "image/png"
    shown = png_array(answer.body)
    with CaptureReader(run["capture"]) as capture:
        overview, header = capture.first_overview()
    assert list(overview.shape) == detail["overview"]["shape"]
    assert detail["overview"]["pixel_A"] == header["pixel_size_A"]
    assert shown.shape == overview.shape  # 768² stays whole (under 1024 px)
    assert correlation(shown, np.clip(overview, *np.percentile(overview, [0.5, 99.5]))) > 0.999


def test_particles_are_the_stack(run, url):
    shown = get_json(f"{url}/api/particles")["particles"]
    star = run["star"]
    assert len(shown) == len(star) == run["result"]["phased"]
    assert [p["key"] for p in shown] == sorted((p["key"] for p in shown), reverse=True)  # newest first
    for particle in shown:
        row = star[(star["simedScanY"] == particle["scan_yx"][0]) & (star["simedScanX"] == particle["scan_yx"][1])]
        assert len(row) == 1
        row = row.iloc[0]
        assert particle["fourier_r"] == pytest.approx(row["simedFourierR"], rel=1e-6)
        assert particle["r_free"] == pytest.approx(row["simedRFree"], rel=1e-6)
        assert particle["resolution_A"] == pytest.approx(row["simedResolutionEstimateA"], rel=1e-6)
        assert particle["uncertainty"] == pytest.approx(row["simedUncertainty"], rel=1e-6)
        number, stack = row["rlnImageName"].split("@")
        with mrcfile.open(run["series_dir"] / stack, permissive=True) as mrc:
            written = np.asarray(mrc.data, np.float64).reshape(-1, *mrc.data.shape[-2:])[int(number) - 1]
        phased = png_array(get(f"{url}{particle['images']['phased']}").body)
        assert phased.shape == written.shape
        assert correlation(phased, np.clip(written, *np.percentile(written, [0.5, 99.5]))) > 0.999
        lowres = png_array(get(f"{url}{particle['images']['lowres']}").body)
        assert lowres.shape == written.shape and lowres.std() > 0


def test_resolution_timeline_holds_every_phased_particle(run, url):
    timeline = get_json(f"{url}/api/resolution?since=0")
    star = run["star"]
    assert sorted(i["resolution_A"] for i in timeline["items"]) == \
        pytest.approx(sorted(star["simedResolutionEstimateA"]), rel=1e-6)
    assert [i["key"] for i in timeline["items"]] == list(range(1, len(star) + 1)) and timeline["last"] == len(star)
    assert get_json(f"{url}/api/resolution?since={len(star)}") == {"last": len(star), "items": []}


def test_rate_timeline_ends_with_the_final_status(run, url):
    items = get_json(f"{url}/api/rate")["items"]
    status = json.loads((run["out"] / "status.json").read_text())
    assert [i["seq"] for i in items] == list(range(1, len(items) + 1)) and len(items) >= 3
    assert get_json(f"{url}/api/rate?since=2")["items"] == items[2:]
    assert (items[-1]["frames_per_s"], items[-1]["queue_depth"], items[-1]["lag_s"]) == \
        (status["ingest"]["frames_per_s"], status["ingest"]["queue_depth"], status["ingest"]["lag_s"])


def test_messages_are_the_warnings_the_run_logged(run, url):
    items = get_json(f"{url}/api/messages")["items"]
    logged = [(r.levelname, r.name, r.getMessage()) for r in run["warnings"]]
    assert [(i["level"], i["logger"], i["text"][:len(t)]) for i, (_, _, t) in zip(items, logged)] == logged
    assert any("rejected message" in i["text"] for i in items)


def test_series_files_are_the_files_on_disk(run, url):
    (series,) = get_json(f"{url}/api/series")["series"]
    for listed in series["files"]:
        answer = get(f"{url}{listed['url']}")
        assert answer.status == 200, listed
        assert answer.body == (run["series_dir"] / listed["name"]).read_bytes()
    assert get(f"{url}/series/1/files/particles.star").headers["Content-Type"].startswith("text/plain")
    for name in ("status.json", "..%2Fstatus.json", "particles.star.tmp", "picks.json%00"):
        assert get(f"{url}/series/1/files/{name}").status == 404, name


def test_page_static_files_and_the_api_index(url):
    page = get(f"{url}/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'<script src="/static/app.js"' in page.body
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert get(f"{url}/static/app.js").headers["Content-Type"].startswith("text/javascript")
    assert get(f"{url}/static/style.css").headers["Content-Type"].startswith("text/css")
    assert get(f"{url}/static/secret.py").status == 404
    assert get(f"{url}/favicon.ico").status == 204
    assert get_json(f"{url}/api") == API
    for path in API:  # every documented GET answers
        if path != "/api/events":
            concrete = path.replace("{key}", "1").replace("{name}", "particles.star").split("?")[0]
            assert get(f"{url}{concrete}").status == 200, path


def test_bad_requests_get_specific_errors(url):
    for path, status, words in (("/api/rate?since=-1", 400, "since must be a record number"),
                                ("/api/messages?since=x", 400, "since must be a record number"),
                                ("/api/series/99", 404, "no series 99"),
                                ("/api/series/99/overview.png", 404, "no overview"),
                                ("/api/particles/999/phased.png", 404, "not among the newest kept")):
        answer = get(f"{url}{path}")
        assert (answer.status, words in answer.json()["error"]) == (status, True), (path, answer.body)
    assert get(f"{url}/api/status", method="POST").status == 405
    assert get(f"{url}/api/nothing").status == 404


def test_event_stream_sends_the_api_documents(url):
    events = read_events(f"{url}/api/events", {"hello", "status", "series", "particles", "rate", "resolution",
                                               "messages"})
    assert events["status"][0] == get_json(f"{url}/api/status")
    assert events["series"][0] == get_json(f"{url}/api/series")
    assert events["particles"][0] == get_json(f"{url}/api/particles")
    assert events["resolution"][0] == get_json(f"{url}/api/resolution")
    assert events["messages"][0] == get_json(f"{url}/api/messages")


# ------------------------------------------------------------------ who may see it

def test_loopback_without_token_answers_loopback_hosts_only(url):
    port = url.rsplit(":", 1)[1]
    assert get(f"{url}/api/status", headers={"Host": f"localhost:{port}"}).status == 200
    assert get(f"{url}/api/status", headers={"Host": f"[::1]:{port}"}).status == 200
    rebound = get(f"{url}/api/status", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status == 403 and "loopback" in rebound.json()["error"]


def test_beyond_loopback_every_path_needs_the_token(run):
    token, made = access_token("0.0.0.0", None)
    assert made and len(token) >= 32
    assert access_token("127.0.0.1", None) == (None, False) and access_token("localhost", None) == (None, False)
    assert access_token("0.0.0.0", "x" * 16) == ("x" * 16, False)
    with WebServer(run["pipeline"].view, "0.0.0.0", 0, token) as server:
        url = f"http://127.0.0.1:{server.port}"
        paths = ["/", "/static/app.js", "/api", "/api/status", "/api/series", "/api/series/1",
                 "/api/series/1/overview.png", "/api/particles", "/api/particles/1/phased.png", "/api/rate",
                 "/api/events", "/series/1/files/particles.star"]
        for path in paths:
            for headers in ({}, {"Authorization": f"Bearer {token[:-1]}x"}, {"Cookie": "simed_token=wrong"}):
                answer = get(f"{url}{path}", headers=headers)
                assert answer.status == 401 and "access token" in answer.json()["error"], (path, headers)
        for path in paths[1:-3] + ["/series/1/files/particles.star"]:
            assert get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}).status == 200, path
            assert get(f"{url}{path}", headers={"Cookie": f"simed_token={token}"}).status == 200, path
            assert get(f"{url}{path}{'&' if '?' in path else '?'}token={token}").status == 200, path
        opened = get(f"{url}/?token={token}")  # the printed address: a cookie, then the page
        assert opened.status == 303 and opened.headers["Location"] == "/"
        cookie = opened.headers["Set-Cookie"]
        assert f"simed_token={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(f"{url}/", headers={"Cookie": f"simed_token={token}"}).status == 200


def test_a_command_beyond_loopback_gets_a_token(run):
    said = []
    with serving(run["pipeline"].view, WebOptions(web="0.0.0.0:0"), said.append) as server:
        assert server.token and f"?token={server.token}" in server.url and server.url in said[0]
        assert get(f"http://127.0.0.1:{server.port}/api/status").status == 401
    with serving(run["pipeline"].view, WebOptions(web="127.0.0.1:0"), said.append) as server:
        assert server.token is None and get(f"http://127.0.0.1:{server.port}/api/status").status == 200
    with serving(run["pipeline"].view, WebOptions(), said.append) as server:
        assert server is None


def test_a_taken_port_is_a_clear_error(run, url, tiny_phaser, tmp_path, capsys):
    from simed_stream.cli import main
    from simed_stream.errors import SimedError

    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(SimedError, match=f"cannot serve the page on 127.0.0.1:{port}"):
        WebServer(run["pipeline"].view, "127.0.0.1", port)
    assert main(["run", "--out", str(tmp_path), "--model", str(tiny_phaser), "--device", "cpu",
                 "--web", f"127.0.0.1:{port}"]) == 2
    assert f"cannot serve the page on 127.0.0.1:{port}" in capsys.readouterr().err
