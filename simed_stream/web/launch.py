"""The page for a command (`simed run`, `replay`, `demo`): its address and token from the
command's settings (`WebOptions`), the address to open said once, the final page held a while
after the run. Beyond loopback there is always a token: the one given, or one made here."""

from __future__ import annotations

import secrets
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from simed_stream.live.settings import WebOptions
from simed_stream.live.view import LiveView
from simed_stream.web.access import is_loopback
from simed_stream.web.server import WebServer


def binds_loopback(host: str) -> bool:
    """Every address `host` stands for is a loopback one (a name that does not resolve: False)."""
    if is_loopback(host):
        return True
    try:
        return all(is_loopback(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return False


def access_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """The token to require on `host`, and whether it was made here."""
    if given is not None or binds_loopback(host):
        return given, False
    return secrets.token_urlsafe(24), True


@contextmanager
def serving(view: LiveView, options: WebOptions, say: Callable[[str], None]) -> Iterator[WebServer | None]:
    """Serve `view` while the block runs, if `options.web` asks for a page (else yield None)."""
    address = options.web_address()
    if address is None:
        yield None
        return
    host, port = address
    token, made = access_token(host, options.web_token)
    server = WebServer(view, host, port, token).start()
    say(f"live page: {server.url}" + (" (beyond loopback: an access token was made for it; give web_token to "
                                      "choose your own)" if made else ""))
    try:
        yield server
    finally:
        server.stop()


def hold(server: WebServer | None, seconds: float, say: Callable[[str], None]) -> None:
    """After the run: keep serving its final state for `seconds`, or until Ctrl-C (SIGINT, as
    during the run: even where the command was started with it ignored, e.g. in the background).
    Call from the main thread."""
    if server is None or seconds <= 0:
        return
    say(f"live page: the run is over; its final state stays at {server.url} for {seconds:g} s (Ctrl-C ends it)")
    ended = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: ended.set())
    try:
        ended.wait(seconds)
    finally:
        signal.signal(signal.SIGINT, previous)
