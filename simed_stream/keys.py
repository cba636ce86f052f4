"""CURVE key files for the ZeroMQ links that leave the machine (`links.py` uses them).

A key pair is two files in ZeroMQ's own certificate format (`zmq.auth`): `NAME.key` holds the
public key — copy it to the peers that must trust this machine — and `NAME.key_secret` holds both
keys and never leaves it (written owner-only; refused when others can read it, as ssh does).
An *authorized keys* folder holds the `.key` files of the peers allowed to connect.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from simed_stream.errors import LinkError

@dataclass(frozen=True)
class KeyPair:
    public: Path  # NAME.key
    secret: Path  # NAME.key_secret


def create_key_pair(folder: Path, name: str) -> KeyPair:
    """Write `folder/NAME.key` and `folder/NAME.key_secret` (owner-only); never overwrite."""
    import zmq.auth

    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise LinkError(f"key name {name!r} must be a plain file name")
    folder = Path(folder)
    pair = KeyPair(folder / f"{name}.key", folder / f"{name}.key_secret")
    for path in (pair.public, pair.secret):
        if path.exists():
            raise LinkError(f"{path} exists: keys are never overwritten (remove it first, or choose another name)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
        secret.chmod(0o600)
    except OSError as error:
        raise LinkError(f"cannot write keys into {folder}: {error.strerror or error}") from None
    return KeyPair(public, secret)


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise LinkError(f"{what} {path} does not exist (make keys with `simed keys NAME`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise LinkError(f"{what} {path} is not a ZeroMQ key file: {error}") from None
    if not public or len(public) != 40:
        raise LinkError(f"{what} {path} holds no valid public key")
    return public, secret


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of this machine's pair, from its `.key_secret` file."""
    path = Path(path)
    public, secret = _load(path, "secret key file")
    if not secret or len(secret) != 40:
        raise LinkError(f"{path} holds no secret key: give the NAME.key_secret file, not NAME.key")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LinkError(f"secret key file {path} can be read by others: chmod 600 {path}")
    return public, secret


def load_public(path: Path) -> bytes:
    """The Z85 public key in a `.key` (or `.key_secret`) file."""
    return _load(path, "public key file")[0]


def load_authorized(folder: Path) -> frozenset[bytes]:
    """The public keys of every `*.key` file in `folder`: the peers allowed to connect."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LinkError(f"authorized keys folder {folder} does not exist")
    keys = frozenset(load_public(path) for path in sorted(folder.glob("*.key")))
    if not keys:
        raise LinkError(f"authorized keys folder {folder} holds no *.key file: nobody could connect")
    return keys
