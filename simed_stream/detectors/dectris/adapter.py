"""The receiver's side of a DECTRIS detector: a PULL socket connected to the DCU's PUSH endpoint
(stream v2: port 31001; stream v1: 9999). Each message is told apart by its first byte — a JSON
part (`{`) is stream v1, anything else is read as stream v2's CBOR — so one setting serves both.

Frames are handed on in batches (`SeriesBuilder`: 64 frames, or what came within 50 ms, or
what came before the wire went quiet), so the receiver pays its per-message cost once a batch.
"""

from __future__ import annotations

from simed_stream.detectors.base import Decoded
from simed_stream.detectors.dectris.stream_v1 import StreamV1
from simed_stream.detectors.dectris.stream_v2 import StreamV2
from simed_stream.detectors.series_builder import SeriesBuilder
from simed_stream.detectors.settings import SourceSettings
from simed_stream.detectors.vendor_adapter import VendorAdapter
from simed_stream.detectors.zmq_pull import PullSocket

MAX_MESSAGES_PER_POLL = 256


class DectrisAdapter(VendorAdapter):
    name = "dectris"

    def __init__(self, settings: SourceSettings, rcvhwm: int, max_message_bytes: int):
        super().__init__(PullSocket(settings.data_endpoint, max(rcvhwm, 64), 2 * max_message_bytes, settings.security),
                         SeriesBuilder(settings, max_message_bytes))
        self.pull = self.transport
        self.v1 = StreamV1(self.builder)
        self.v2 = StreamV2(self.builder, settings.dectris.channel)

    def poll(self, timeout_ms: int) -> list[Decoded]:
        parts = self.pull.receive(timeout_ms)
        if parts is None:
            return self.builder.flush()
        events = self._message(parts)
        for _ in range(MAX_MESSAGES_PER_POLL):
            parts = self.pull.receive_ready()
            if parts is None:
                break
            events += self._message(parts)
        return events + self.builder.flush_if_due()

    def _message(self, parts) -> list[Decoded]:
        first = parts[0].buffer
        if self.v1.expect is not None or (len(first) and first[0] == ord("{")):
            self.v1.message_start()
            events = []
            for part in parts:
                events += self.v1.part(part.buffer)
            return events
        events = self.v2.message(first)
        if len(parts) > 1:
            events += self.builder.reject(f"a stream v2 message of {len(parts)} parts (it has one)")
        return events
