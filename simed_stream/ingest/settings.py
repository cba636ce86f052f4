"""The receiver's settings: `simed receive`'s flags and YAML keys, the live pipeline's ingest."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from simed_stream.config import cli
from simed_stream.detectors.settings import SourceSettings
from simed_stream.protocol import DEFAULT_MAX_MESSAGE_BYTES


class ReceiverSettings(SourceSettings):
    """The source (`detectors/settings.py`: source, endpoint, scan, optics, overview) and the
    receiver's own bounds and times."""

    capture_dir: Path = Field(description="folder for the captures", json_schema_extra=cli("--out", "--capture-dir"))
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0,
                                   description="larger messages are rejected, their frames accounted for")
    queue_messages: int = Field(8, ge=1, description="messages queued between the receive and processing threads")
    rcvhwm: int = Field(8, ge=1, description="ZeroMQ's receive buffer, in messages")
    series_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                    description="close a series without series_end after this long with no "
                                    "message for it on the wire")
    overview_grace_s: float = Field(5.0, ge=0, allow_inf_nan=False,
                                    description="after series_end, wait this long for the overview image")
    beam_radius_px: float = Field(8.0, gt=0, allow_inf_nan=False,
                                  description="radius of the window the beam centre is measured in")
    max_pending_positions: int = Field(256, ge=1, description="positions summed at once per series; when full, "
                                       "the oldest incomplete one is written as incomplete")
    max_open_series: int = Field(4, ge=1, description="series open at once")
    flush_interval_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="seconds between capture flushes")
