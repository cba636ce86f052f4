"""The web server: aiohttp in a thread of its own, on a socket bound when it is made.

Its event loop runs in the `simed-web` thread; the pipeline's threads never wait for it and it
takes none of their locks: it only reads what they publish (`live/view.py`). What a client can
make it hold is bounded (`Limits`): connections beyond `max_connections` are closed as they
connect; a connection whose unsent answer has not shrunk for `stall_s` is aborted (a client that
never reads); idle connections close after `keepalive_s`; requests carry no body."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from simed_stream.errors import SimedError
from simed_stream.live.view import LiveView
from simed_stream.web.access import Gate, security_headers
from simed_stream.web.images import PngCache
from simed_stream.web.routes import add_routes
from simed_stream.web.state import STATE, Limits, PageState


def make_app(view: LiveView, token: str | None, limits: Limits) -> web.Application:
    gate = Gate(token, limits.max_requests)
    app = web.Application(middlewares=[gate.middleware], client_max_size=1024)
    app[STATE] = PageState(view, limits, PngCache(limits.pngs_kept), gate)
    app.on_response_prepare.append(security_headers)
    add_routes(app)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); a clear error if it cannot be had."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as failure:
        raise SimedError(f"cannot serve the page on {host}:{port}: {failure.strerror or failure}") from None


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted from its admission to its loss: aiohttp lists
    a connection only from `connection_made`, a loop iteration or two after admission, so a count
    of its list plus "admitted, not yet listed" guessed by callback order miscounted under load."""

    def __init__(self, inner: asyncio.Protocol, lost) -> None:
        self.inner, self.lost = inner, lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost()
        self.inner.connection_lost(exc)


class WebServer:
    """`start()` serves `view` until `stop()`; `url` is the address to open (with the token)."""

    def __init__(self, view: LiveView, host: str, port: int, token: str | None = None, limits: Limits = Limits()):
        self.host, self.token, self.limits = host, token, limits
        self._socket = bind(host, port)
        self.port = self._socket.getsockname()[1]
        self._app = make_app(view, token, limits)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simed-web", daemon=True)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.refused = self.peak_connections = self._open = 0  # refused: closed at once (too many)

    @property
    def url(self) -> str:
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> "WebServer":
        self._thread.start()
        self._call(self._serve())
        return self

    def stop(self) -> None:
        """Close every connection (open pages see the end of their stream) and the thread."""
        if not self._thread.is_alive():
            self._socket.close()
            return
        try:
            self._call(self._shutdown(), timeout_s=15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    def stats(self) -> dict:
        """What the server holds now (for tests and benchmarks)."""
        return self._call(self._stats())

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- in the web thread
    def _call(self, coroutine, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _serve(self) -> None:
        self._app[STATE].closing = asyncio.Event()
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                                     keepalive_timeout=self.limits.keepalive_s)
        await self._runner.setup()
        self._server = await self._loop.create_server(self._admit, sock=self._socket)
        self._reaper = asyncio.create_task(self._reap())

    def _admit(self) -> asyncio.Protocol:
        """The protocol for a new connection: aiohttp's, counted, or one that closes it (too many)."""
        if self._open >= self.limits.max_connections:
            self.refused += 1
            return _Refused()
        self._open += 1
        self.peak_connections = max(self.peak_connections, self._open)
        return _Counted(self._runner.server(), self._lost)

    def _lost(self) -> None:
        self._open -= 1

    async def _reap(self) -> None:
        """Abort connections whose unsent answer never got below its size for `stall_s`."""
        stalled: dict[int, tuple[int, float]] = {}  # handler id → (bytes unsent, since)
        while True:
            await asyncio.sleep(min(1.0, self.limits.stall_s / 4))
            now, still = self._loop.time(), {}
            for handler in self._runner.server.connections:
                transport = handler.transport
                unsent = transport.get_write_buffer_size() if transport is not None else 0
                if unsent == 0:
                    continue
                size, since = stalled.get(id(handler), (unsent, now))
                if unsent < size:
                    size, since = unsent, now
                if now - since >= self.limits.stall_s:
                    transport.abort()
                    self._app[STATE].cut_off += 1
                else:
                    still[id(handler)] = (size, since)
            stalled = still

    async def _shutdown(self) -> None:
        self._app[STATE].closing.set()
        self._reaper.cancel()
        self._server.close()
        await self._runner.cleanup()

    async def _stats(self) -> dict:
        connections, state = self._runner.server.connections, self._app[STATE]
        return {"connections": self._open, "peak_connections": self.peak_connections,
                "refused": self.refused, "cut_off": state.cut_off, "streams": state.streams,
                "unsent_bytes": sum(h.transport.get_write_buffer_size() for h in connections if h.transport),
                "in_flight": state.gate.in_flight, "peak_in_flight": state.gate.peak_in_flight,
                "turned_away": state.gate.turned_away, "pngs_cached": len(state.pngs)}
