"""The live page's picture for the docs: `simed demo --web` with the page open in headless
Chromium, photographed once the demo's series is phased (while the demo holds its page), then
the demo ended with Ctrl-C. Needs Debian's chromium and playwright.

    python tools/screenshot_page.py [--out docs/live-page.png] [--demo-out /tmp/simed-demo-shot]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _address(demo: subprocess.Popen) -> str:
    for line in demo.stdout:
        print(line, end="", file=sys.stderr)
        if line.startswith("live page: http://"):
            threading.Thread(target=lambda: [print(rest, end="", file=sys.stderr) for rest in demo.stdout],
                             daemon=True).start()  # keep its output flowing
            return line.split()[2]
    raise SystemExit(f"the demo ended ({demo.wait()}) before serving its page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/live-page.png"))
    parser.add_argument("--demo-out", type=Path, default=Path("/tmp/simed-demo-shot"))
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    demo = subprocess.Popen([sys.executable, "-m", "simed_stream.cli", "demo", "--out", str(args.demo_out),
                             "--web", "127.0.0.1:0", "--web-hold-s", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _address(demo)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1050})
            page.goto(url)
            deadline = time.monotonic() + 600
            while page.text_content("#state") != "stopped":
                if time.monotonic() > deadline:
                    raise SystemExit("the demo's run did not end within 10 minutes")
                time.sleep(0.1)
            page.wait_for_timeout(1500)  # the last events and the gallery's images
            page.screenshot(path=str(args.out), full_page=True)
            print(f"{args.out}: {page.text_content('#particles-phased')} particles phased")
            browser.close()
    finally:
        for _ in range(100):  # Ctrl-C: a clean stop of the run, then the end of its hold
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=3)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            demo.kill()
            demo.wait()


if __name__ == "__main__":
    main()
