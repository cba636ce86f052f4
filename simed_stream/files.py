"""The files the processor writes: names of their own, a write probe before any work, and
atomic replacement (a reader sees the previous complete file or the next, never half of one)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Callable

from simed_stream.errors import SimedError


def safe_name(text: str) -> str:
    """`text` as a file name: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:128] or "series"


def unique_path(folder: Path, name: str, suffix: str = "") -> Path:
    """`folder/<safe name><suffix>`, or `<name>-2<suffix>`, `-3`, …: never an existing file or
    folder, so a series id seen again (a looping detector) never overwrites earlier output."""
    base = safe_name(name)
    path, counter = folder / f"{base}{suffix}", 1
    while path.exists():
        counter += 1
        path = folder / f"{base}-{counter}{suffix}"
    return path


class SpaceReserve:
    """Disk space held in a file of its own (`path`, `nbytes` allocated), to be released when
    something beside it needs room on a full disk. Raises OSError when the space is not there."""

    def __init__(self, path: Path, nbytes: int):
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                for start in range(0, nbytes, 1 << 20):  # a file system without fallocate: write it
                    os.write(fd, bytes(min(1 << 20, nbytes - start)))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def check_writable(folder: Path, what: str = "the output directory") -> None:
    """Create `folder` and write a probe file there: fail before any work, not after phasing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".simed-probe-{os.getpid()}-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SimedError(f"cannot write {what} {folder}: {error.strerror or error}") from None


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """`write(temporary)`, then `os.replace` it onto `path`; the temporary (`.<name>.tmp` beside
    it) is removed if `write` fails. durable: fsync the file before and its folder after the
    rename, so both survive a power cut (not for files rewritten every second)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        if durable:
            fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)


def write_text_atomically(path: Path, text: str, durable: bool = True) -> None:
    replace_atomically(path, lambda temporary: temporary.write_text(text), durable)
