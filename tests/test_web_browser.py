"""The live page in a real headless browser (Debian's Chromium driven by Playwright).

`simed replay --data … --web 127.0.0.1:0` waits for a detector; the page is opened; then a fake
detector (`simed detector --capture`) streams the simulated scan. The page must show the frame
counter rising, the overview with its picks, phased particles, and at the end the totals that
status.json holds. Both commands are real processes; the replay ends its hold on Ctrl-C."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from simed_stream.cli.replay import replay_capture
from simed_stream.live.settings import LiveSettings
from simed_stream.web.launch import access_token
from simed_stream.web.server import WebServer

from web_helpers import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.skipif(
    chromium() is None, reason="BROWSER TESTS NOT RUN: Debian's chromium is not installed (`make test` installs it "
    "as root with apt-get; elsewhere: apt-get install chromium)")
TOTALS = {"#frames-received": ("ingest", "frames_received"), "#frames-rejected": ("ingest", "frames_rejected"),
          "#frames-dropped": ("ingest", "frames_dropped_at_source"), "#frames-missing": ("ingest", "frames_missing"),
          "#particles-found": ("pipeline", "particles_found"), "#particles-phased": ("pipeline", "particles_phased"),
          "#particles-flagged": ("pipeline", "particles_flagged"), "#series-done": ("pipeline", "series_done"),
          "#series-open": ("pipeline", "series_open")}


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Command:
    """`simed …` in a process of its own; its stderr lines kept on a queue."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "simed_stream.cli", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()

    def line_with(self, text: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, f"exited {self.process.returncode}: {self.seen[-20:]}"
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout_s} s: {self.seen[-20:]}")

    def end(self, timeout_s: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def number(page, selector: str) -> int | None:
    text = page.text_content(selector).replace(",", "").strip()
    return int(text) if text.isdigit() else None


def until(predicate, timeout_s: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_the_page_follows_a_replayed_scan(scan, tiny_phaser, tmp_path, browser):
    endpoint, out = f"ipc://{tmp_path}/data.sock", tmp_path / "out"
    replay = Command("replay", str(scan), "--data", endpoint, "--out", str(out), "--model", str(tiny_phaser),
                     "--device", "cpu", "--batch-size", "2", "--batch-latency-s", "0.2", "--status-interval-s", "0.2",
                     "--web", "127.0.0.1:0", "--web-hold-s", "600")
    detector = None
    try:
        url = replay.line_with("live page: http://").split("live page: ", 1)[1].split()[0]
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors, details = [], []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: details.append(1) if "/api/series/1" in request.url else None)
        opened = time.monotonic()
        page.goto(url)
        until(lambda: page.text_content("#feed") == "feed: live" and page.text_content("#state") == "running",
              what="the page's feed")
        assert number(page, "#frames-received") == 0  # nothing streamed yet
        detector = Command("detector", "--capture", str(scan), "--data", endpoint, "--control", "none",
                           "--rate", "20")
        counts = [0]
        while counts[-1] < 50:  # the scan's 50 frames, as the page shows them arrive
            shown = number(page, "#frames-received")
            if shown is not None and shown != counts[-1]:
                counts.append(shown)
            assert detector.process.poll() in (None, 0) and len(counts) < 60
            time.sleep(0.05)
        assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 50, counts
        picks = until(lambda: page.locator("#picks circle").count(), what="the picks on the overview")
        until(lambda: page.eval_on_selector("#overview-img", "img => img.complete && img.naturalWidth > 0"),
              what="the overview image")
        until(lambda: page.locator("#gallery figure.particle").count(), what="a phased particle")
        until(lambda: page.eval_on_selector_all(
            "#gallery img", "images => images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0)"),
            what="the gallery's images")
        until(lambda: page.text_content("#state") == "stopped", what="the end of the run")
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "stopped"
        page.wait_for_timeout(500)  # the last series event, sent with the final status
        for selector, (section, key) in TOTALS.items():
            assert number(page, selector) == status[section][key], selector
        (series,) = status["series"]
        row = page.locator("#series-table tbody tr")
        assert row.count() == 1
        assert [number(page, f"#series-table tbody tr td.n-{key}") for key in ("picks", "phased", "flagged")] == \
            [series["picks"], series["phased"], series["flagged"]]
        assert page.locator("#picks circle").count() == series["picks"] >= picks
        assert page.locator("#picks circle.phased").count() == series["phased"] >= 1
        assert page.locator("#gallery figure.particle").count() == series["phased"]
        assert errors == []
        # the page asks for a series' detail only when the feed says it changed (≤ 2 ticks a second)
        assert len(details) <= 3 * (time.monotonic() - opened) + 2, len(details)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert detector.end() == 0
        replay.process.send_signal(signal.SIGINT)  # ends the hold
        assert replay.end() == 0, replay.seen[-10:]
    finally:
        for command in (detector, replay):
            if command is not None and command.process.poll() is None:
                command.process.kill()
                command.process.wait()


def test_the_page_beyond_loopback_opens_with_its_token(scan, tiny_phaser, tmp_path, browser):
    pipeline = replay_capture(scan, LiveSettings(out=tmp_path / "out", model=tiny_phaser, device="cpu"), "max")
    token, _ = access_token("0.0.0.0", None)
    with WebServer(pipeline.view, "0.0.0.0", 0, token) as server:
        page = browser.new_page()
        refused = page.goto(f"http://127.0.0.1:{server.port}/")
        assert refused.status == 401 and "access token" in page.text_content("body")
        page.goto(f"http://127.0.0.1:{server.port}/?token={token}")
        assert page.url == f"http://127.0.0.1:{server.port}/"  # the token is in a cookie, not in the address
        until(lambda: page.text_content("#state") == "stopped", what="the page's feed")
        until(lambda: page.eval_on_selector_all(
            "#gallery img", "images => images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0)"),
            what="the gallery's images")
        assert number(page, "#particles-phased") == pipeline.results[0].phased
