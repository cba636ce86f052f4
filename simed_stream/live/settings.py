"""`simed run`'s settings: its YAML keys and its flags (and those of `simed replay`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from simed_stream.chain_settings import ChainSettings
from simed_stream.detectors.settings import SourceSettings
from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.protocol import DEFAULT_MAX_MESSAGE_BYTES


class LiveSettings(ChainSettings, SourceSettings):
    out: Path = Field(description="output folder: captures/, one folder per series, status.json")
    batch_latency_s: float = Field(1.0, gt=0, allow_inf_nan=False,
                                   description="a ready particle waits at most this long for its batch to fill")
    overview_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                      description="after series_end, wait this long for the overview")
    series_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="no series_end and no message on "
                                    "the wire for this long: the series is closed as incomplete")
    max_series: Optional[int] = Field(None, ge=1, description="stop after this many series (default: until Ctrl-C)")
    phasing_workers: int = Field(0, ge=0, description="the phase-retrieval engine in this many worker processes over "
                                 "ZeroMQ (0: in this process)")
    max_cached_bytes: int = Field(2 * 1024**3, ge=0, description="compressed position sums kept for series whose "
                                  "overview has not come yet")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="larger messages are rejected, "
                                   "their frames accounted for")
    event_queue: int = Field(4096, ge=1, description="hand-overs from the receiver queued for the pipeline; when "
                             "full, ingest waits (back-pressure, not loss)")
    status_interval_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="seconds between status lines "
                                     "and status.json")
    phasing_join_timeout_s: float = Field(600.0, gt=0, allow_inf_nan=False,
                                          description="at stop, how long queued batches may still take")

    def receiver_settings(self) -> ReceiverSettings:
        source = {key: getattr(self, key) for key in SourceSettings.model_fields}
        return ReceiverSettings(capture_dir=self.out / "captures", max_message_bytes=self.max_message_bytes,
                                series_timeout_s=self.series_timeout_s, overview_grace_s=self.overview_timeout_s,
                                **source)
