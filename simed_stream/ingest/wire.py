"""The data socket and the receive thread: receive, decode, queue — nothing else.

ZeroMQ and JSON release the GIL or are cheap, so this thread keeps up with the wire while the
processing thread works. The queue is bounded: when processing falls behind it fills, this
thread blocks, ZeroMQ's receive buffer (RCVHWM messages) fills and then the detector's send
buffer — back-pressure, not loss. Every item carries the wire clock (`Wire.clock_ns`), with
which the receiver judges silence on the wire rather than its own speed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

import zmq

from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.ingest.stages import StageClock
from simed_stream.protocol import Message, ProtocolError, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One queued item: a decoded message, a rejected one, a quiet tick or the last item."""

    kind: Literal["message", "rejected", "tick", "stop"]
    received_ns: int  # time.time_ns() at receipt: the capture's arrival time and the lag
    wire_ns: int  # the wire clock at receipt
    message: Message | None = None
    header_bytes: bytes = b""  # part 0 as received, kept verbatim in the capture
    error: ProtocolError | None = None


class Wire:
    """Connects a PULL socket to the detector and feeds a bounded queue from its own thread."""

    def __init__(self, settings: ReceiverSettings, stages: StageClock):
        self.settings = settings
        self.stages = stages
        self.queue: queue.Queue[Received] = queue.Queue(maxsize=settings.queue_messages)
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blocked_ns = 0  # time this thread spent blocked on a full queue

    def clock_ns(self) -> int:
        """The wire clock: monotonic time this thread spent listening, i.e. not blocked by
        back-pressure. While it is blocked, the detector's messages wait unseen in ZeroMQ's
        buffers, so that time must never count as silence."""
        return time.monotonic_ns() - self._blocked_ns

    def start(self, consumer_alive: Callable[[], bool]) -> None:
        """Connect and start receiving; `consumer_alive()` false lets a blocked put give up."""
        socket = self._context.socket(zmq.PULL)
        socket.setsockopt(zmq.RCVHWM, self.settings.rcvhwm)
        # hard cap per part: beyond it ZeroMQ drops the connection (and reconnects); between the
        # soft limit and this, a message is received and rejected with its frames accounted for
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.settings.max_message_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.settings.data_endpoint)
        except zmq.ZMQError:
            socket.close(0)
            raise
        self._socket = socket
        self._consumer_alive = consumer_alive
        self._thread = threading.Thread(target=self._receive_loop, name="simed-receive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving; the last item queued is a "stop"."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
        self._context.term()

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                if self.queue.empty():  # everything received so far is handled: quiet until now
                    self._put(Received("tick", time.time_ns(), self.clock_ns()))
                continue
            with self.stages("receive"):
                parts = self._socket.recv_multipart(copy=False)
            received_ns, wire_ns = time.time_ns(), self.clock_ns()
            buffers = [part.buffer for part in parts]
            try:
                with self.stages("validate"):
                    message = decode(buffers, self.settings.max_message_bytes)
            except ProtocolError as error:
                self._put(Received("rejected", received_ns, wire_ns, error=error))
                continue
            except Exception as error:  # a decoder gap must never take the receiver down
                log.exception("unexpected error decoding a message")
                reason = f"malformed message ({error.__class__.__name__})"
                self._put(Received("rejected", received_ns, wire_ns, error=ProtocolError(reason)))
                continue
            self._put(Received("message", received_ns, wire_ns, message, bytes(buffers[0])))
        self._put(Received("stop", time.time_ns(), self.clock_ns()))

    def _put(self, item: Received) -> None:
        """Queue an item, waiting while the queue is full (back-pressure); only a tick may be
        dropped, and only a dead consumer makes us give up."""
        try:
            self.queue.put_nowait(item)
            return
        except queue.Full:
            pass
        blocked_since = time.monotonic_ns()
        try:
            while True:
                try:
                    self.queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    if item.kind == "tick" or not self._consumer_alive():
                        return
        finally:
            self._blocked_ns += time.monotonic_ns() - blocked_since
