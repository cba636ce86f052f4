"""The ZeroMQ PULL socket of the detectors that push (simed-stream/1, DECTRIS stream v1 and v2):
the receiver connects to the detector's bound PUSH endpoint, with bounded buffers."""

from __future__ import annotations

import zmq


class PullSocket:
    """One PULL socket with its own context: at most `rcvhwm` messages wait in ZeroMQ, and a part
    over `max_part_bytes` makes ZeroMQ drop the peer (it reconnects) instead of buffering it."""

    def __init__(self, endpoint: str, rcvhwm: int, max_part_bytes: int):
        self.endpoint, self.rcvhwm, self.max_part_bytes = endpoint, rcvhwm, max_part_bytes
        self._context = zmq.Context()
        self.socket: zmq.Socket | None = None

    def open(self) -> None:
        socket = self._context.socket(zmq.PULL)
        socket.setsockopt(zmq.RCVHWM, self.rcvhwm)
        socket.setsockopt(zmq.MAXMSGSIZE, self.max_part_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.endpoint)
        except zmq.ZMQError:
            socket.close(0)
            raise
        self.socket = socket

    def receive(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message's parts (zero-copy frames), or None if nothing came in `timeout_ms`."""
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
        if self.socket is not None:
            self.socket.close(0)
        self._context.term()
