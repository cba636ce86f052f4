"""The receiver's side of simed-stream/1: each multipart message decoded and checked by
`protocol.decode` — it already is the receiver's event."""

from __future__ import annotations

import logging

from simed_stream.detectors.base import Adapter, Decoded
from simed_stream.detectors.zmq_pull import PullSocket
from simed_stream.protocol import ProtocolError, decode

log = logging.getLogger(__name__)


class SimedAdapter(Adapter):
    name = "simed"

    def __init__(self, endpoint: str, rcvhwm: int, max_message_bytes: int, security=None):
        # hard cap per part: beyond it ZeroMQ drops the connection (and reconnects); between the
        # soft limit and this, a message is received and rejected with its frames accounted for
        self.pull = PullSocket(endpoint, rcvhwm, 2 * max_message_bytes, security)
        self.max_message_bytes = max_message_bytes

    def open(self) -> None:
        self.pull.open()

    def close(self) -> None:
        self.pull.close()

    def poll(self, timeout_ms: int) -> list[Decoded]:
        parts = self.pull.receive(timeout_ms)
        if parts is None:
            return []
        buffers = [part.buffer for part in parts]
        try:
            return [Decoded(decode(buffers, self.max_message_bytes), bytes(buffers[0]))]
        except ProtocolError as error:
            return [Decoded(error=error)]
        except Exception as error:  # a decoder gap must never take the receiver down
            log.exception("unexpected error decoding a message")
            return [Decoded(error=ProtocolError(f"malformed message ({error.__class__.__name__})"))]
