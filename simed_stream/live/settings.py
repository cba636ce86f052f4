"""`simed run`'s settings: its YAML keys and its flags (and those of `simed replay`; the web
page's, `WebOptions`, also those of `simed demo`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator, model_validator

from simed_stream.chain_settings import ChainSettings
from simed_stream.config import Settings, cli
from simed_stream.detectors.settings import SourceSettings
from simed_stream.ingest.settings import ReceiverSettings
from simed_stream.protocol import DEFAULT_MAX_MESSAGE_BYTES


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


class WebOptions(Settings):
    """The live page and its JSON API (`simed_stream/web/`, docs/live.md): where, who may see it,
    how long it stays after the run."""

    web: Optional[str] = Field(None, description="serve the live page and its JSON API on HOST:PORT, e.g. "
                               "127.0.0.1:8765 (port 0: a free one); beyond loopback only with an access token "
                               "(web_token, or one is made and printed) (default: no page)")
    web_token: Optional[str] = Field(None, min_length=16, max_length=256, pattern=r"^[A-Za-z0-9._~-]+$",
                                     description="the access token the page and the API then require, on any "
                                     "interface (a flag is visible to other users in ps: prefer the YAML key)")
    web_hold_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="after the run, keep serving the final "
                              "page this long (Ctrl-C ends it sooner)")

    @field_validator("web")
    @classmethod
    def _host_port(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        match = _HOST_PORT.match(value)
        if match is None or int(match["port"]) > 65535:
            raise ValueError("expected HOST:PORT such as 127.0.0.1:8765 or [::1]:8765 (port 0 to 65535)")
        return value

    def web_address(self) -> tuple[str, int] | None:
        """(host, port) of `web` (brackets of an IPv6 host removed), or None: no page."""
        if self.web is None:
            return None
        host, port = self.web.rsplit(":", 1)
        return host.strip("[]"), int(port)

    def web_options(self) -> dict:
        """These keys alone, to hand on to another command's settings (the demo's live run)."""
        return {key: getattr(self, key) for key in WebOptions.model_fields}


class LiveSettings(ChainSettings, SourceSettings, WebOptions):
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
    phasing_jobs_endpoint: Optional[str] = Field(None, min_length=1, description="bind the fan-out's jobs socket here, "
                                                 "for workers on other machines (`simed phase-worker`; needs keys "
                                                 "beyond loopback) (default: a private local socket)")
    phasing_results_endpoint: Optional[str] = Field(None, min_length=1, description="bind the fan-out's results "
                                                    "socket here (with phasing_jobs_endpoint)")
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

    @model_validator(mode="after")
    def _fanout_endpoints_together(self) -> "LiveSettings":
        if (self.phasing_jobs_endpoint is None) != (self.phasing_results_endpoint is None):
            raise ValueError("phasing_jobs_endpoint and phasing_results_endpoint go together (or neither)")
        return self

    def receiver_settings(self) -> ReceiverSettings:
        source = {key: getattr(self, key) for key in SourceSettings.model_fields}
        return ReceiverSettings(capture_dir=self.out / "captures", max_message_bytes=self.max_message_bytes,
                                series_timeout_s=self.series_timeout_s, overview_grace_s=self.overview_timeout_s,
                                **source)
