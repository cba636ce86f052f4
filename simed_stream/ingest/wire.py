"""The receive thread: the source's adapter receives and decodes, this thread queues — nothing else.

The adapter (`detectors/`) owns the socket and turns the detector's wire format into the
receiver's events; ZeroMQ, sockets and decompression release the GIL or are cheap, so this thread
keeps up with the wire while the processing thread works. The queue is bounded: when processing falls behind it fills, this
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

from simed_stream.detectors import Decoded, make_adapter
from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.ingest.stages import StageClock
from simed_stream.protocol import Message, ProtocolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One queued item: a decoded message, a rejected one, a loose overview (`overviews.py`), a
    quiet tick or the last item."""

    kind: Literal["message", "rejected", "overview", "tick", "stop"]
    received_ns: int  # time.time_ns() at receipt: the capture's arrival time and the lag
    wire_ns: int  # the wire clock at receipt
    message: Message | None = None
    header_bytes: bytes = b""  # part 0 as received, kept verbatim in the capture
    error: ProtocolError | None = None


class Wire:
    """Opens the source's adapter and feeds a bounded queue from its own thread."""

    def __init__(self, settings: ReceiverSettings, stages: StageClock):
        self.settings = settings
        self.stages = stages
        self.queue: queue.Queue[Received] = queue.Queue(maxsize=settings.queue_messages)
        self.adapter = make_adapter(settings, settings.rcvhwm, settings.max_message_bytes)
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blocked_ns = 0  # time this thread spent blocked on a full queue

    def clock_ns(self) -> int:
        """The wire clock: monotonic time this thread spent listening, i.e. not blocked by
        back-pressure. While it is blocked, the detector's messages wait unseen in ZeroMQ's
        buffers, so that time must never count as silence."""
        return time.monotonic_ns() - self._blocked_ns

    def start(self, consumer_alive: Callable[[], bool]) -> None:
        """Connect and start receiving; `consumer_alive()` false lets a blocked put give up.
        Raises `zmq.ZMQError` or `OSError` for an endpoint that cannot be used."""
        self.adapter.open()
        self._opened = True
        self._consumer_alive = consumer_alive
        self._thread = threading.Thread(target=self._receive_loop, name="simed-receive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving; the last item queued is a "stop"."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def close(self) -> None:
        if self._opened:
            self.adapter.close()
            self._opened = False

    def put_input(self, payload) -> None:
        """What another input of the receiver hands over from its own thread (a loose overview,
        or a rejection): queued like the wire's, waiting while the queue is full."""
        if isinstance(payload, Decoded):
            item = Received("rejected" if payload.error else "message", time.time_ns(), self.clock_ns(),
                            payload.message, payload.header_bytes, payload.error)
        else:
            item = Received("overview", time.time_ns(), self.clock_ns(), payload)
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.stages("receive"):  # and decode: the adapter's job
                    events = self.adapter.poll(50)
            except Exception as error:  # an adapter gap must never take the receiver down
                log.exception("unexpected error in the %s adapter", self.adapter.name)
                events = [Decoded(error=ProtocolError(f"adapter error ({error.__class__.__name__}: {error})"))]
            if not events:
                if self.queue.empty():  # everything received so far is handled: quiet until now
                    self._put(Received("tick", time.time_ns(), self.clock_ns()))
                continue
            received_ns, wire_ns = time.time_ns(), self.clock_ns()
            for event in events:
                self._queue_event(event, received_ns, wire_ns)
        for event in self.adapter.flush():
            self._queue_event(event, time.time_ns(), self.clock_ns())
        self._put(Received("stop", time.time_ns(), self.clock_ns()))

    def _queue_event(self, event: Decoded, received_ns: int, wire_ns: int) -> None:
        if event.error is not None:
            self._put(Received("rejected", received_ns, wire_ns, error=event.error))
        else:
            self._put(Received("message", received_ns, wire_ns, event.message, event.header_bytes))

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
