"""The ZeroMQ PULL socket of the detectors that push (simed-stream/1, DECTRIS stream v1 and v2):
the receiver connects to the detector's bound PUSH endpoint, with bounded buffers — with CURVE
keys when given, and under `links`' rule when not (docs/security.md)."""

from __future__ import annotations

import zmq

from simed_stream import links


class PullSocket:
    """One PULL socket with its own context: at most `rcvhwm` messages wait in ZeroMQ, and a part
    over `max_part_bytes` makes ZeroMQ drop the peer (it reconnects) instead of buffering it."""

    def __init__(self, endpoint: str, rcvhwm: int, max_part_bytes: int, security: links.LinkSecurity | None = None):
        self.endpoint, self.rcvhwm, self.max_part_bytes, self.security = endpoint, rcvhwm, max_part_bytes, security
        self._context = zmq.Context()
        self.socket: zmq.Socket | None = None
        self.handshakes: links.HandshakeWatch | None = None  # with keys: failed handshakes, logged

    def open(self) -> None:
        """Raises zmq.ZMQError for a bad endpoint, LinkError for bad keys or an insecure endpoint."""
        socket = self._context.socket(zmq.PULL)
        socket.setsockopt(zmq.RCVHWM, self.rcvhwm)
        socket.setsockopt(zmq.MAXMSGSIZE, self.max_part_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            if self.security is not None and self.security.secret_key is not None:
                self.handshakes = links.HandshakeWatch(socket, self.endpoint)
            links.connect(socket, self.endpoint, self.security)
        except Exception:
            if self.handshakes is not None:
                self.handshakes.close()
                self.handshakes = None
            socket.close(0)
            raise
        self.socket = socket

    def receive(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message's parts (zero-copy frames), or None if nothing came in `timeout_ms`."""
        if self.handshakes is not None:
            self.handshakes.check()
        if not self.socket.poll(timeout_ms):
            return None
        return self.socket.recv_multipart(copy=False)

    def receive_ready(self) -> list[zmq.Frame] | None:
        """A message already waiting, or None at once."""
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def close(self) -> None:
        if self.handshakes is not None:
            self.handshakes.close()
        if self.socket is not None:
            self.socket.close(0)
        self._context.term()
