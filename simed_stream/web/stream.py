"""`GET /api/events`: the page's live feed, as server-sent events.

A stream starts with `hello`, then sends, whenever it changed, each document of the API under
its name — `status`, `series`, `particles` — and the new records of the timelines — `rate`,
`resolution`, `messages` ({"last": N, "items": [...]}). It holds no queue: each tick it sends
what is new *now*, so a slow client skips states instead of piling them up. A client that reads
nothing for `stall_s` is cut off; at most `max_streams` streams are open at once."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from simed_stream import __version__
from simed_stream.web.access import error
from simed_stream.web.documents import encode
from simed_stream.web.state import STATE, PageState


class ClientGone(Exception):
    """The client went away, or read nothing for too long (its connection is then aborted)."""


async def write_within(request: web.Request, response: web.StreamResponse, data: bytes, seconds: float) -> None:
    """Write `data`; waiting on a client that does not read is bounded by `seconds`."""
    try:
        await asyncio.wait_for(response.write(data), seconds)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError) as failure:
        if request.transport is not None:
            request.transport.abort()
            request.app[STATE].cut_off += isinstance(failure, asyncio.TimeoutError)
        raise ClientGone from failure


class Cursor:
    """What one stream has sent so far."""

    def __init__(self):
        self.versions: dict[str, object] = {}
        self.seq = {"rate": 0, "resolution": 0, "messages": 0}

    def news(self, state: PageState) -> list[tuple[str, bytes]]:
        view, found = state.view, []
        for name, version, make in (("status", view.status_version, state.status),
                                    ("series", (view.series_version, view.status_version), state.series),
                                    ("particles", view.gallery_version, state.particles)):
            if self.versions.get(name) != version:
                data = make()
                if data is not None:
                    self.versions[name] = version
                    found.append((name, data))
        for name, records in (("rate", view.rate), ("resolution", view.resolution), ("messages", view.messages)):
            if records.last > self.seq[name]:
                data, self.seq[name] = state.timeline(name, self.seq[name])
                found.append((name, data))
        return found


def frame(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    limits = state.limits
    if state.streams >= limits.max_streams:
        return error(503, f"{limits.max_streams} pages are open already; close one", **{"Retry-After": "5"})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    state.streams += 1
    try:
        await response.prepare(request)
        hello = encode({"version": __version__, "started_unix_s": state.view.started_unix_s})
        await write_within(request, response, b"retry: 2000\n" + frame("hello", hello), limits.stall_s)
        await _follow(request, response, state)
    except (ClientGone, ConnectionError):
        pass
    finally:
        state.streams -= 1
    return response


async def _follow(request: web.Request, response: web.StreamResponse, state: PageState) -> None:
    cursor, limits, quiet_since = Cursor(), state.limits, time.monotonic()
    while not state.closing.is_set() and request.transport is not None and not request.transport.is_closing():
        news = cursor.news(state)
        for name, data in news:
            await write_within(request, response, frame(name, data), limits.stall_s)
        if news:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > limits.heartbeat_s:
            await write_within(request, response, b": still here\n\n", limits.stall_s)
            quiet_since = time.monotonic()
        try:
            await asyncio.wait_for(state.closing.wait(), limits.tick_s)
        except asyncio.TimeoutError:
            pass
