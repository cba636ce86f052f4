"""The fake detector's sockets: the PUSH data socket (bound, as real detectors do; it counts
connected receivers) and the REP control socket's server (status, arm, abort). Both are bound
through `links`: as CURVE servers when the detector has keys (its `guard`), else under the rule
for plain links (docs/security.md)."""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

import zmq

from simed_stream import links
from simed_stream.protocol import encode_header


class DataSocket:
    def __init__(self, context: zmq.Context, endpoint: str, send_timeout_s: float,
                 security: links.LinkSecurity | None = None):
        self.context, self.endpoint, self.send_timeout_s = context, endpoint, send_timeout_s
        self.security, self.guard = security, None  # the guard: set by the detector when it has keys
        self._socket = None
        self._monitor = None
        self._peers: set[int] = set()

    def bind(self) -> None:
        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.SNDHWM, 8)
        socket.setsockopt(zmq.SNDTIMEO, int(self.send_timeout_s * 1000))
        # a peer counts once its handshake succeeded: a client the guard refused is no receiver
        self._monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        try:
            links.bind(socket, self.endpoint, self.security, self.guard)
        except Exception:
            socket.disable_monitor()
            self._monitor.close(0)
            socket.close(0)
            raise
        self._socket = socket
        self._peers = set()

    def close(self, linger_s: float) -> None:
        if self._socket is not None:
            self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._socket.close()
            self._socket = None

    def _poll_peers(self, timeout_ms: int = 0) -> int:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(timeout_ms):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers.add(event["value"])  # the connection's file descriptor
            else:
                self._peers.discard(event["value"])
            timeout_ms = 0
        return len(self._peers)

    def wait_for_peer(self, timeout_s: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._poll_peers(50) < 1:
            if time.monotonic() > deadline or stop.is_set():
                return False
        return True

    def send(self, parts: list, timeout_s: float | None = None) -> bool:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.send_timeout_s)
        while True:
            try:
                self._socket.send_multipart(parts, copy=False)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False


class ControlServer:
    """Answers JSON {"command": "status"|"arm"|"abort"} on a REP socket, in its own thread."""

    def __init__(self, context: zmq.Context, endpoint: str, status: Callable[[], dict], arm: Callable[[], None],
                 abort: Callable[[], str], security: links.LinkSecurity | None = None,
                 guard: links.Guard | None = None):
        self.status, self.arm, self.abort = status, arm, abort
        self._stop = threading.Event()
        socket = context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, 65536)
        try:
            links.bind(socket, endpoint, security, guard)
        except Exception:
            socket.close(0)
            raise
        self._socket = socket  # bound here, so a bind error reaches the caller; used only by the thread
        self._thread = threading.Thread(target=self._serve, daemon=True, name="detector-control")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _serve(self) -> None:
        socket = self._socket
        try:
            while not self._stop.is_set():
                if not socket.poll(100):
                    continue
                try:
                    request = json.loads(socket.recv())
                    command = request.get("command") if isinstance(request, dict) else None
                except (ValueError, RecursionError):
                    command = None
                if command == "status":
                    reply = {"ok": True, **self.status()}
                elif command == "arm":
                    self.arm()
                    reply = {"ok": True, "state": "armed"}
                elif command == "abort":
                    reply = {"ok": True, "state": self.abort()}
                else:
                    reply = {"ok": False, "error": "expected JSON {\"command\": \"status\"|\"arm\"|\"abort\"}"}
                socket.send(encode_header(reply))
        finally:
            socket.close(0)
