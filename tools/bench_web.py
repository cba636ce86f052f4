"""What the live page costs ingest (`python tools/bench_ingest.py --web`).

Each run is the whole live pipeline of `simed run` (receiver, event and phasing threads; the
detector's synthetic scan at full speed in its own process). A run "with the page" also serves
it (`--web`) to the page open in headless Chromium (Debian's; one browser for the whole
benchmark, its start-up not measured, stopped during the runs without the page) and to another
process polling /api/status at 10 Hz over a kept-alive connection, as a monitoring tool would.
Runs go in pairs, without and with, the order alternating; the other jobs on a shared machine
move the rates from run to run, so the headline is the median of the pairs' ratios (the ratio of
the medians beside it). CPU seconds are counted too: the pipeline's process (the web server's
thread included) per 1000 frames, and the browser's and the poller's during the run. The last
line printed is JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from contextlib import ExitStack, contextmanager
from pathlib import Path

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def _process(command: list[str], **options):
    """A process of ours in a group of its own, ended (all of it) with the block."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            os.killpg(process.pid, signal.SIGCONT)  # a stopped one (the browser between runs) ends too
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        try:  # what it left behind in its group (a browser's helpers)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_cpu_s(group: int) -> float:
    """CPU seconds used so far by the live processes of a process group (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def poll(url: str) -> None:
    """The polling client (its own process): GET `url` at 10 Hz until SIGTERM, then print how many
    answers came in how many seconds."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
    answered, began = 0, time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (print(answered, time.monotonic() - began, flush=True), os._exit(0)))
    while True:
        started = time.monotonic()
        connection.request("GET", address.path)
        response = connection.getresponse()
        answered += response.status == 200 and bool(response.read())
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


class Browser:
    """One headless Chromium for the whole benchmark, showing http://127.0.0.1:PORT/ — each run
    "with the page" serves it on that port, and the page's event stream reconnects to it (its
    start-up is not what is measured). During runs without the page it is stopped (SIGSTOP)."""

    def __init__(self, stack: ExitStack, folder: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.stack, self.folder, self.process = stack, folder, None

    def show(self, server) -> None:
        """The page follows `server` (on `self.port`): opened the first time, woken after."""
        if self.process is None:
            self.process = self.stack.enter_context(_process(
                [shutil.which("chromium"), *BROWSER_FLAGS, f"--user-data-dir={self.folder}/browser",
                 f"http://127.0.0.1:{self.port}/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        else:
            os.killpg(self.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while server.stats()["streams"] < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the page did not connect within 60 s")
            time.sleep(0.1)
        time.sleep(2.0)  # its first documents and images

    def hide(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)


def live_ingest(frames: int, browser: Browser | None) -> dict:
    """One run; with a `browser`, the page is served, shown, and polled at 10 Hz."""
    from bench_ingest import _endpoint, _start_detector
    from simed_stream.live.pipeline import LivePipeline
    from simed_stream.live.settings import LiveSettings
    from simed_stream.web.server import WebServer

    endpoint = _endpoint()
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        pipeline = LivePipeline(LiveSettings(out=Path(folder) / "out", data_endpoint=endpoint, max_series=1,
                                             device="cpu", overview_timeout_s=1.0, max_message_bytes=64 << 20))
        runner = threading.Thread(target=pipeline.run, name="bench-pipeline")
        runner.start()
        clients = []
        if browser is not None:
            server = stack.enter_context(WebServer(pipeline.view, "127.0.0.1", browser.port))
            poller = stack.enter_context(_process([sys.executable, __file__, "--poll",
                                                   f"http://127.0.0.1:{browser.port}/api/status"],
                                                  stdout=subprocess.PIPE, text=True))
            browser.show(server)
            clients = [browser.process, poller]
        clients_cpu, cpu = [_group_cpu_s(c.pid) for c in clients], time.process_time()
        detector = _start_detector("simed", endpoint, frames, "max")
        runner.join(timeout=600)
        cpu = time.process_time() - cpu
        clients_cpu = [_group_cpu_s(c.pid) - before for c, before in zip(clients, clients_cpu)]
        detector.wait()
        answers_per_s = None
        if clients:
            browser.hide()
            os.killpg(poller.pid, signal.SIGTERM)
            answered, seconds = poller.communicate(timeout=10)[0].split()
            answers_per_s = int(answered) / float(seconds)
        summary = pipeline.receiver.closed[0]
    a = summary.accounting
    return {"fps": a["received"] / summary.ingest_seconds, "dropped": a["dropped_at_source"] + a["missing"],
            "cpu_ms_per_kframe": 1e6 * cpu / a["received"], "clients_cpu_s": clients_cpu,
            "answers_per_s": answers_per_s}


def compare(frames: int, pairs: int) -> None:
    if shutil.which("chromium") is None:
        raise SystemExit("--web opens the page in Debian's chromium: apt-get install chromium")
    runs: dict[bool, list] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        browser = Browser(stack, folder)
        live_ingest(2000, None)  # warm up: numba's cache and the page cache
        live_ingest(2000, browser)  # and the browser's start
        for i in range(pairs):
            for page in ((False, True) if i % 2 == 0 else (True, False)):
                run = live_ingest(frames, browser if page else None)
                runs[page].append(run)
                _say(page, run)
    print(json.dumps({"web": summary(frames, runs)}))


def _say(page: bool, run: dict) -> None:
    print(f"{'with' if page else 'without'} the page: {run['fps']:.0f} frames/s, {run['dropped']} not "
          f"received, {run['cpu_ms_per_kframe']:.0f} CPU ms per 1000 frames"
          + (f"; browser {run['clients_cpu_s'][0]:.2f} CPU s, poller {run['clients_cpu_s'][1]:.2f} CPU s, "
             f"API answered {run['answers_per_s']:.1f}/s" if page else ""), flush=True)


def summary(frames: int, runs: dict[bool, list]) -> dict:
    median = statistics.median
    rates = {page: [r["fps"] for r in runs[page]] for page in runs}
    return {
        "frames": frames, "pairs": len(rates[True]), "without_page_fps": [round(v) for v in rates[False]],
        "with_page_fps": [round(v) for v in rates[True]],
        "ratio": round(median(w / o for w, o in zip(rates[True], rates[False])), 3),
        "ratio_of_medians": round(median(rates[True]) / median(rates[False]), 3), "goal": 0.95,
        "cpu_ms_per_kframe": {"without": round(median(r["cpu_ms_per_kframe"] for r in runs[False]), 1),
                              "with": round(median(r["cpu_ms_per_kframe"] for r in runs[True]), 1)},
        "browser_cpu_s": round(median(r["clients_cpu_s"][0] for r in runs[True]), 2),
        "poller_cpu_s": round(median(r["clients_cpu_s"][1] for r in runs[True]), 2),
        "api_answers_per_s": round(median(r["answers_per_s"] for r in runs[True]), 1),
        "dropped": sum(r["dropped"] for page in runs for r in runs[page]),
    }


if __name__ == "__main__":  # the polling client's own process: bench_web.py --poll URL
    if sys.argv[1:2] != ["--poll"] or len(sys.argv) != 3:
        raise SystemExit("usage: python tools/bench_ingest.py --web (this module's own entry is its poller)")
    poll(sys.argv[2])
