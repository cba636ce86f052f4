"""Who may read the page, and how much at once: aiohttp middlewares.

- With an access token (always beyond loopback) every path needs it: `Authorization: Bearer
  TOKEN`, the `simed_token` cookie, or `?token=TOKEN`; opening `/?token=TOKEN` sets the cookie
  (HttpOnly, SameSite=Strict) and redirects to `/`, so the page's own requests carry it.
- Without a token (loopback only) the Host header must name a loopback address: a web page
  elsewhere cannot reach the API by pointing a name of its own at 127.0.0.1 (DNS rebinding).
- At most `max_requests` requests are handled at once (event streams have their own bound);
  more are answered 503 at once.
- Every answer says: same origin only, no sniffing, no framing, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass

from aiohttp import web

COOKIE = "simed_token"
STREAM_PATH = "/api/events"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """`host` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header ("[::1]:8765" → "::1", "localhost:8765" → "localhost")."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), content_type="application/json",
                        headers=headers)


@dataclass
class Gate:
    """The token rule and the bound on requests in flight; used from the web thread only."""

    token: str | None
    max_requests: int
    in_flight: int = 0
    peak_in_flight: int = 0
    turned_away: int = 0  # answered 503: too many at once

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if self.token is None:
            if not is_loopback(host_of(request.host)):
                return error(403, f"this page answers to a loopback address only, not {request.host!r}")
        elif not self._has_token(request):
            return error(401, "this page needs its access token: open the address simed printed at start "
                         "(…/?token=…) or send 'Authorization: Bearer TOKEN'", **{"WWW-Authenticate": "Bearer"})
        elif request.path == "/" and "token" in request.query:  # the printed address: keep it in a cookie
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            return response
        if request.path == STREAM_PATH:
            return await handler(request)
        if self.in_flight >= self.max_requests:
            self.turned_away += 1
            return error(503, "too many requests at once; try again", **{"Retry-After": "1"})
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    def _has_token(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        offered = [credentials if scheme.lower() == "bearer" else None, request.cookies.get(COOKIE),
                   request.query.get("token")]
        expected = self.token.encode()
        return any(hmac.compare_digest(given.encode(), expected) for given in offered if given)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every answer, errors included."""
    response.headers.update(SECURITY_HEADERS)
