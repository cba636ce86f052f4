"""What the web thread keeps: the limits it enforces, the view it reads, and caches of what it
made from the view (JSON by version, PNGs by key). Only the web thread's event loop uses it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from simed_stream.live.view import LiveView
from simed_stream.web import documents
from simed_stream.web.access import Gate
from simed_stream.web.documents import encode
from simed_stream.web.images import PngCache


@dataclass(frozen=True)
class Limits:
    """Bounds on what clients can make the server hold; docs/live.md lists them."""

    max_connections: int = 64  # more are closed as soon as they connect
    max_requests: int = 32  # handled at once; more are answered 503
    max_streams: int = 16  # event streams (open pages) at once; more are answered 503
    stall_s: float = 10.0  # a client that reads nothing of an answer this long is cut off
    keepalive_s: float = 5.0  # an idle connection (or one that never asks) is closed after this
    tick_s: float = 1.0  # how often an event stream looks for news (status.json is rewritten each second)
    heartbeat_s: float = 15.0  # a comment on a quiet stream, so a vanished client is noticed
    timeline_items: int = 2000  # at most this many records per timeline answer or event
    pngs_kept: int = 96
    file_chunk: int = 64 * 1024  # series files are sent in pieces of this size

    def __post_init__(self):
        for name in ("max_connections", "max_requests", "max_streams", "timeline_items", "pngs_kept", "file_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")
        if min(self.stall_s, self.keepalive_s, self.tick_s, self.heartbeat_s) <= 0:
            raise ValueError("Limits: every duration must be positive")


@dataclass
class PageState:
    view: LiveView
    limits: Limits
    pngs: PngCache
    gate: Gate
    streams: int = 0
    cut_off: int = 0  # connections aborted: their client read nothing for `stall_s`
    closing: asyncio.Event | None = None  # set when the server stops: streams end
    _json: dict[str, tuple[object, bytes]] = field(default_factory=dict)

    def json(self, name: str, version: object, make: Callable[[], object]) -> bytes:
        """`make()` encoded, made again only when `version` changed since the last time."""
        kept = self._json.get(name)
        if kept is None or kept[0] != version:
            kept = self._json[name] = (version, encode(make()))
        return kept[1]

    # -- the documents the API answers and the event stream sends
    def status(self) -> bytes | None:
        """status.json's content, as last written (None before the first)."""
        status = self.view.status
        return None if status is None else self.json("status", self.view.status_version, lambda: status)

    def series(self) -> bytes:
        view = self.view  # its entries carry the accounting of open series, from the status
        return self.json("series", (view.series_version, view.status_version), lambda: documents.series_list(view))

    def particles(self) -> bytes:
        return self.json("particles", self.view.gallery_version, lambda: documents.particles(self.view))

    def timeline(self, name: str, since: int) -> tuple[bytes, int]:
        """The records of timeline `name` numbered above `since`, and the number of the last one."""
        records, fields = {"rate": (self.view.rate, documents.RATE_FIELDS),
                           "resolution": (self.view.resolution, documents.RESOLUTION_FIELDS),
                           "messages": (self.view.messages, documents.MESSAGE_FIELDS)}[name]
        document = documents.timeline(records, fields, since, self.limits.timeline_items)
        return encode(document), document["last"]


STATE = web.AppKey("simed_page_state", PageState)
