"""The shape the vendor adapters share: a transport, and a `SeriesBuilder` that makes their
frames the receiver's events; for the TCP ones also the poll loop (data, quiet, closed)."""

from __future__ import annotations

from simed_stream.detectors.base import Adapter, Decoded
from simed_stream.detectors.series_builder import SeriesBuilder
from simed_stream.detectors.settings import SourceSettings
from simed_stream.detectors.tcp_stream import TcpStream


class VendorAdapter(Adapter):
    def __init__(self, transport, builder: SeriesBuilder):
        self.transport, self.builder = transport, builder

    def open(self) -> None:
        self.transport.open()

    def close(self) -> None:
        self.transport.close()

    def flush(self) -> list[Decoded]:
        return self.builder.flush()


class TcpAdapter(VendorAdapter):
    """Parses what the TCP stream holds; a quiet wire lets a held message go and may end a series."""

    def __init__(self, settings: SourceSettings, max_message_bytes: int):
        super().__init__(TcpStream(settings.data_endpoint, max_message_bytes), SeriesBuilder(settings, max_message_bytes))
        self.stream, self.max_message_bytes = self.transport, max_message_bytes
        self.last_frame_s = 0.0

    def poll(self, timeout_ms: int) -> list[Decoded]:
        state = self.stream.poll(timeout_ms)
        if state == "closed":
            return self._parse(quiet=True) + self._closed()
        if state is None:
            return self._parse(quiet=True) + self._quiet_end()
        return self._parse(quiet=False)

    def _parse(self, quiet: bool) -> list[Decoded]:
        raise NotImplementedError

    def _closed(self) -> list[Decoded]:
        raise NotImplementedError

    def _quiet_end(self) -> list[Decoded]:
        raise NotImplementedError
