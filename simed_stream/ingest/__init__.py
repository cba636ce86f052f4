"""Ingest: the receiver of simed-stream/1 series — socket (`wire`), open series and their
accounting (`series`), position sums and beam centres (`sums`), counters (`telemetry`), and the
processing thread that ties them together (`receiver`). Settings: `settings`."""

from simed_stream.ingest.receiver import Receiver, ReceiverListener
from simed_stream.ingest.series import SeriesSummary
from simed_stream.ingest.settings import ReceiverSettings

__all__ = ["Receiver", "ReceiverListener", "ReceiverSettings", "SeriesSummary"]
