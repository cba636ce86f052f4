"""The detector side of a TCP data port, for the Merlin and Serval simulators: listen (Merlin's
data port, Serval's `tcp://listen@`) or connect (Serval's `tcp://connect@`), then send bytes."""

from __future__ import annotations

import socket
import time

from simed_stream.detectors.tcp_stream import parse_endpoint
from simed_stream.detectors.vendor_sim import EncodedCache, SimSeries, VendorSimulator


class TcpSender:
    def __init__(self, endpoint: str, timeout_s: float = 30.0):
        """`endpoint` as the detector sees it: tcp://HOST:PORT listens, tcp://connect@HOST:PORT connects."""
        self.host, self.port, _ = parse_endpoint(endpoint)
        self.connect_mode = "connect@" in endpoint
        self.timeout_s = timeout_s
        self.server = None if self.connect_mode else socket.create_server((self.host, self.port))
        if self.server is not None:
            self.port = self.server.getsockname()[1]
        self.connection: socket.socket | None = None
        self.hold_bytes = 0  # a simulator sending as fast as it can gathers frames (fewer system calls)
        self._held: list = []
        self._held_bytes = 0

    def wait_for_peer(self) -> None:
        if self.connection is not None:
            return
        if self.connect_mode:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    self.connection = socket.create_connection((self.host, self.port), timeout=1.0)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        else:
            self.server.settimeout(self.timeout_s)
            self.connection, _ = self.server.accept()
        self.connection.settimeout(self.timeout_s)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)

    def send(self, *chunks: bytes) -> None:
        """Send now, or with `hold_bytes` set gather up to that many bytes into one system call."""
        self._held += chunks
        self._held_bytes += sum(len(c) for c in chunks)
        if self._held_bytes >= self.hold_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        chunks, self._held, self._held_bytes = self._held, [], 0
        self.wait_for_peer()
        views = [memoryview(c) for c in chunks]
        while views:
            sent = self.connection.sendmsg(views)
            while views and sent >= len(views[0]):  # drop what the kernel took, whole chunks first
                sent -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][sent:]

    def disconnect(self) -> None:
        self.flush()
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self) -> None:
        self.disconnect()
        if self.server is not None:
            self.server.close()


class TcpSimulator(VendorSimulator):
    """A vendor simulator on a TCP data port; a series that does not complete drops the connection."""

    def __init__(self, endpoint: str, **options):
        super().__init__(**options)
        self.sender = TcpSender(endpoint)
        self.sender.hold_bytes = 4 << 20 if self.rate_fps in ("max", "recorded") else 0
        self.port = self.sender.port
        self.cache = EncodedCache()

    def close(self) -> None:
        self.sender.close()

    def end_series(self, series: SimSeries, complete: bool) -> None:
        self.sender.flush()
        if not complete:
            self.sender.disconnect()

