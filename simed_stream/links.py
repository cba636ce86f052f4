"""Authenticated, encrypted ZeroMQ links: CURVE on every socket that can leave the machine.

Who is who. The side that binds is the CURVE *server*: it holds its key pair (`secret_key`) and
admits only the clients whose public keys lie in `authorized_keys` (checked by a ZAP handler,
one per ZeroMQ context, which also admits the server's own key). The side that connects is the
*client*: it holds its own pair and knows the server's public key (`server_key`), so it talks to
that server only. Data link: the detector binds, the receiver connects. Fan-out: the pipeline
binds, phase workers connect. Control: the detector binds, its client connects.

The rule. An endpoint on this machine (ipc://, inproc://, tcp:// on a loopback address) may go
without keys. Any other endpoint, bound or connected, needs them: without keys it is refused
(`LinkError`) unless `insecure` is set, which is logged as a warning at every bind or connect.
Keys given for a local endpoint are used all the same.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path
from typing import Optional

import zmq
from pydantic import Field

from simed_stream.config import Settings
from simed_stream.errors import LinkError
from simed_stream.keys import load_authorized, load_public, load_secret

log = logging.getLogger(__name__)
_LOGGED_REFUSALS = 10  # then one in 100: a scanning peer must not flood the log


class LinkSecurity(Settings):
    """The keys of this process's links (YAML `security:`; flags by these names)."""

    secret_key: Optional[Path] = Field(None, description="this machine's key pair: the NAME.key_secret file made by "
                                       "`simed keys NAME`")
    server_key: Optional[Path] = Field(None, description="public key (.key) of the peer this connects to: the "
                                       "detector's for a receiver, the pipeline's for a phase worker")
    authorized_keys: Optional[Path] = Field(None, description="folder of the public keys (.key) of the peers that "
                                            "may connect to what this binds (receivers, phase workers)")
    insecure: bool = Field(False, description="allow an endpoint off this machine without keys: unauthenticated and "
                           "unencrypted, anyone on that network can read or inject data (logged as a warning)")


def is_local(endpoint: str) -> bool:
    """`endpoint` cannot be reached from another machine: ipc://, inproc://, or tcp:// on loopback."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    # "tcp://source;host:port" connects from source; "tcp://listen@host:port" (a TCP detector)
    host = address.rsplit(":", 1)[0].split(";")[-1].split("@")[-1].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, an interface or '*': possibly reachable from elsewhere
        return False


def allow_plain(endpoint: str, security: LinkSecurity | None, verb: str) -> None:
    """`endpoint` without keys: refused beyond this machine unless the operator said insecure
    (then a warning). Also for the links that cannot have keys (vendors' own protocols)."""
    security = security or LinkSecurity()
    if is_local(endpoint):
        return
    if not security.insecure:
        raise LinkError(f"refusing to {verb} {endpoint} without keys: it can be reached from other machines. Make "
                        f"keys with `simed keys NAME` and name them (secret_key, and server_key or authorized_keys; "
                        f"docs/security.md), or accept an unauthenticated, unencrypted link with --insecure")
    log.warning("INSECURE: %s %s without authentication or encryption (--insecure): anyone on that network can "
                "read or inject data", verb, endpoint)


class Guard:
    """The ZAP handler of one ZeroMQ context: CURVE clients whose public key is authorized get
    in, any other is refused (and logged). Stop it before terminating the context."""

    def __init__(self, context: zmq.Context, security: LinkSecurity):
        if security.secret_key is None or security.authorized_keys is None:
            raise LinkError("a CURVE server needs both secret_key and authorized_keys")
        self.public, self.secret = load_secret(security.secret_key)
        self.allowed = load_authorized(security.authorized_keys) | {self.public}
        self.refused = 0
        self._lock = threading.Lock()
        from zmq.auth.thread import ThreadAuthenticator

        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("simed_stream.links.zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for one connecting client: `key` is its Z85 public key."""
        if key in self.allowed:
            return True
        with self._lock:
            self.refused += 1
            refused = self.refused
        if refused <= _LOGGED_REFUSALS or refused % 100 == 0:
            log.warning("refused a CURVE client (%d so far): its public key %s… is not in authorized_keys",
                        refused, key[:8].decode(errors="replace"))
        return False

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey, socket.curve_publickey = self.secret, self.public
        socket.curve_server = True

    def stop(self) -> None:
        self._authenticator.stop()


def server_guard(context: zmq.Context, security: LinkSecurity | None) -> Guard | None:
    """The guard for a context whose sockets bind, or None without `authorized_keys`. One
    `security` serves a whole process: a pipeline with client keys for its detector (secret_key,
    server_key) and no authorized_keys still binds its private fan-out, plainly, on this machine."""
    if security is None or security.authorized_keys is None:
        return None
    return Guard(context, security)


def bind(socket: zmq.Socket, endpoint: str, security: LinkSecurity | None, guard: Guard | None) -> None:
    """Bind `socket` as a CURVE server when `guard` is given; else plainly, under the rule."""
    if guard is not None:
        guard.secure(socket)
    else:
        if security is not None and security.secret_key is not None and not is_local(endpoint) \
                and not security.insecure:
            raise LinkError(f"refusing to bind {endpoint} without keys: a CURVE server needs authorized_keys too "
                            f"(the folder of the public keys of the peers that may connect)")
        allow_plain(endpoint, security, "bind")
    socket.bind(endpoint)


def connect(socket: zmq.Socket, endpoint: str, security: LinkSecurity | None) -> None:
    """Connect `socket` as a CURVE client when keys are given; else plainly, under the rule."""
    security = security or LinkSecurity()
    if security.secret_key is not None or security.server_key is not None:
        if security.secret_key is None or security.server_key is None:
            raise LinkError(f"connecting to {endpoint} with CURVE needs both secret_key and server_key")
        public, secret = load_secret(security.secret_key)
        socket.curve_secretkey, socket.curve_publickey = secret, public
        socket.curve_serverkey = load_public(security.server_key)
    else:
        allow_plain(endpoint, security, "connect to")
    socket.connect(endpoint)


class HandshakeWatch:
    """A connecting socket's failed CURVE handshakes, logged: a client with the wrong
    `server_key` (or one the server does not authorize) otherwise waits in silence."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH

    def __init__(self, socket: zmq.Socket, endpoint: str):
        self.socket, self.endpoint, self.failures = socket, endpoint, 0
        self._monitor = socket.get_monitor_socket(self.EVENTS)

    def check(self) -> int:
        """Log the failures since the last check (no waiting); returns how many there were in all."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            recv_monitor_message(self._monitor)
            self.failures += 1
            if self.failures <= _LOGGED_REFUSALS or self.failures % 100 == 0:
                log.warning("CURVE handshake with %s failed (%d so far): the peer's key is not server_key, it does not "
                            "authorize ours, or it speaks without keys", self.endpoint, self.failures)
        return self.failures

    def close(self) -> None:
        self.socket.disable_monitor()
        self._monitor.close(0)
