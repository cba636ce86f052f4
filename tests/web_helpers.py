"""What the web tests share: plain HTTP over loopback (urllib, no redirects followed), the
event stream read as a browser would, and the headless Chromium the browser tests drive."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def get(url: str, headers: dict | None = None, method: str = "GET", timeout: float = 30) -> Answer:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def get_json(url: str, **kwargs):
    answer = get(url, **kwargs)
    assert answer.status == 200, (url, answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    return answer.json()


def read_events(url: str, wanted: set[str], timeout_s: float = 30) -> dict[str, list]:
    """Read the event stream at `url` until each of `wanted` has come at least once."""
    events: dict[str, list] = {}
    deadline = time.monotonic() + timeout_s
    with urllib.request.urlopen(url, timeout=timeout_s) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        name = None
        while not wanted <= set(events):
            assert time.monotonic() < deadline, f"only {sorted(events)} of {sorted(wanted)} came"
            line = stream.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.setdefault(name, []).append(json.loads(line[len("data: "):]))
    return events


def raw_connection(port: int, receive_buffer: int = 4096) -> socket.socket:
    """A client socket with a small receive buffer: one that will not read fills up fast."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.connect(("127.0.0.1", port))
    return client


def chromium() -> str | None:
    """Debian's Chromium (`make test` installs it as root), or None."""
    return shutil.which("chromium")
