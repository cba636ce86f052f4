"""`simed keys NAME`: a CURVE key pair for the ZeroMQ links that leave the machine (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from simed_stream.config import Settings, cli


class KeysCommand(Settings):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the machine or role the keys are for, e.g. detector-pc, processing, worker-1",
                      json_schema_extra=cli(positional=True))
    dir: Path = Field(Path("."), description="folder for NAME.key and NAME.key_secret", json_schema_extra=cli("--dir"))


def keys(command: KeysCommand) -> int:
    """Write a key pair: NAME.key (public: copy it to the machines that must trust this one, into
    their authorized_keys folder or as their server_key) and NAME.key_secret (this machine's only,
    owner-readable; name it as secret_key). Existing keys are never overwritten."""
    from simed_stream.keys import create_key_pair

    pair = create_key_pair(command.dir, command.name)
    print(f"keys: public {pair.public} (copy it to the peers), secret {pair.secret} (keep it here; mode 600)")
    return 0
