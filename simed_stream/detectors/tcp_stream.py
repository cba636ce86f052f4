"""The TCP byte stream of the detectors that speak plain TCP (Merlin, Serval), read into one
bounded buffer that the adapters parse in place.

`tcp://HOST:PORT` connects to the detector (retried every half second while it is not there);
`tcp://listen@HOST:PORT` listens and takes the connection the detector opens (Serval's
`tcp://connect@...` destinations). One connection at a time; when it closes the adapter is told,
and the next one is waited for.
"""

from __future__ import annotations

import logging
import select
import socket
import time

log = logging.getLogger(__name__)
RECV_BYTES = 4 << 20
RETRY_S = 0.5


def parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, listen) of `tcp://[listen@]HOST:PORT` (or `HOST:PORT`); OSError when it is not one."""
    text = endpoint.removeprefix("tcp://")
    listen = text.startswith("listen@")
    text = text.removeprefix("listen@").removeprefix("connect@")
    host, _, port = text.rpartition(":")
    # isascii: str.isdigit also accepts '²' and other digits int() refuses
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise OSError(f"{endpoint!r} is not tcp://HOST:PORT or tcp://listen@HOST:PORT")
    return host.strip("[]"), int(port), listen


class TcpStream:
    def __init__(self, endpoint: str, max_message_bytes: int):
        self.endpoint = endpoint
        self.host, self.port, self.listen = parse_endpoint(endpoint)
        self.capacity = max_message_bytes + RECV_BYTES
        self.buffer = bytearray(self.capacity)
        self.start = self.end = 0
        self.connection: socket.socket | None = None
        self.server: socket.socket | None = None
        self._next_try = 0.0
        self._refused_logged = False

    # -- lifecycle
    def open(self) -> None:
        if self.listen:
            server = socket.create_server((self.host, self.port), reuse_port=False)
            server.setblocking(False)
            self.server = server
        else:
            socket.getaddrinfo(self.host, self.port)  # a host that does not resolve fails now, plainly

    def close(self) -> None:
        for s in (self.connection, self.server):
            if s is not None:
                s.close()
        self.connection = self.server = None

    @property
    def connected(self) -> bool:
        return self.connection is not None

    # -- reading
    def poll(self, timeout_ms: int) -> str | None:
        """"data" when bytes were added to the buffer, "closed" when the connection ended, else None."""
        if self.connection is None and not self._connect():
            time.sleep(min(timeout_ms, 50) / 1000)
            return None
        ready, _, _ = select.select([self.connection], [], [], timeout_ms / 1000)
        if not ready:
            return None
        self._make_room()
        try:
            received = self.connection.recv_into(memoryview(self.buffer)[self.end:], self.capacity - self.end)
        except OSError as error:
            log.warning("connection to %s failed: %s", self.endpoint, error)
            received = 0
        if received == 0:
            self.connection.close()
            self.connection = None
            return "closed"
        self.end += received
        return "data"

    def _connect(self) -> bool:
        if time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + RETRY_S
        try:
            if self.listen:
                if not select.select([self.server], [], [], 0)[0]:
                    return False
                self.connection, peer = self.server.accept()
                log.info("detector connected from %s", peer)
            else:
                self.connection = socket.create_connection((self.host, self.port), timeout=RETRY_S)
                log.info("connected to %s", self.endpoint)
        except OSError as error:
            if not self._refused_logged:
                log.warning("cannot reach %s yet (%s); trying every %g s", self.endpoint, error, RETRY_S)
                self._refused_logged = True
            return False
        self.connection.setblocking(True)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._refused_logged = False
        self.start = self.end = 0
        return True

    def _make_room(self) -> None:
        """Move what is left unparsed to the front once the free tail is short."""
        if self.capacity - self.end >= RECV_BYTES:
            return
        left = self.end - self.start
        self.buffer[:left] = self.buffer[self.start:self.end]
        self.start, self.end = 0, left

    # -- the parser's view
    def available(self) -> int:
        return self.end - self.start

    def view(self, offset: int, length: int) -> memoryview:
        return memoryview(self.buffer)[self.start + offset: self.start + offset + length]

    def find(self, pattern: bytes, offset: int = 0, length: int | None = None) -> int:
        """Offset of `pattern` from the parse position, or -1."""
        stop = self.end if length is None else min(self.end, self.start + offset + length)
        at = self.buffer.find(pattern, self.start + offset, stop)
        return -1 if at < 0 else at - self.start

    def consume(self, length: int) -> None:
        self.start += length
        if self.start == self.end:
            self.start = self.end = 0

    def discard(self) -> int:
        """Drop all unparsed bytes (a closed connection's torn message); returns how many."""
        left = self.available()
        self.start = self.end = 0
        return left
