"""The microscope's overview image into the receiver, for detectors whose stream has none: an MRC
or TIFF file dropped into a watched folder (`overview.dir`), or `simed overview FILE` sent to
the receiver's overview endpoint (`overview.endpoint`, bound on loopback by default).

Which series it belongs to: the one named (`simed overview --series ID`, or a file name that
starts with a series id); else, for an overview taken `after` the scan (the default), the newest
open series without one, or the last closed one without one; for one taken `before`, the next
series to start. Its pixel size and the scan → overview affine come from the settings, else
from the file. It then becomes that series' `overview_image` message, captured like any other.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from simed_stream import links
from simed_stream.detectors.base import Decoded
from simed_stream.errors import SimedError
from simed_stream.image_files import SUFFIXES, read_overview
from simed_stream.protocol import OverviewImage, ProtocolError, decode, encode_overview

log = logging.getLogger("simed_stream.ingest")
ANY_SERIES = "*"  # `simed overview` without --series: placed by the rule above
POLL_S = 0.5


@dataclass
class LooseOverview:
    """An overview not yet tied to a series."""

    image: np.ndarray
    pixel_size_A: float | None
    affine: np.ndarray | None
    acquired: str
    name: str
    series_id: str | None = None


class OverviewDesk:
    """Lives in the receiver's processing thread: places loose overviews on series."""

    def __init__(self, settings, max_message_bytes: int):
        self.settings, self.max_message_bytes = settings.overview, max_message_bytes
        self.pending: LooseOverview | None = None  # taken before its scan: waits for the next series
        self.count = 0

    def place(self, loose: LooseOverview, open_series: dict, closed: list) -> Decoded | None:
        """The overview_image message for its series (of the receiver's open series and closed
        summaries), None while it waits for the next series, or a rejection saying why not."""
        waiting = [i for i, series in open_series.items() if not series.overview_received]
        closed_waiting = [summary.series_id for summary in closed if not summary.overview]
        target = loose.series_id or next((i for i in reversed(list(open_series) + [s.series_id for s in closed])
                                          if loose.name.startswith(i)), None)
        if target is None and loose.acquired == "after":
            target = (waiting or closed_waiting or [None])[-1]
        if target is None:
            if self.pending is not None:
                log.warning("overview %s replaces %s, which no series took", loose.name, self.pending.name)
            self.pending = loose
            log.info("overview %s waits for the next series", loose.name)
            return None
        return self.message(loose, target)

    def on_series_start(self, series_id: str) -> Decoded | None:
        loose, self.pending = self.pending, None
        return self.message(loose, series_id) if loose is not None else None

    def message(self, loose: LooseOverview, series_id: str) -> Decoded:
        pixel = self.settings.pixel_size_A or loose.pixel_size_A
        affine = self.settings.affine_matrix() if self.settings.affine is not None else loose.affine
        if pixel is None or affine is None:
            missing = " and ".join(what for what, value in (("pixel size", pixel), ("scan → overview affine", affine))
                                   if value is None)
            return Decoded(error=ProtocolError(f"overview {loose.name}: no {missing} (set overview.pixel_size_A / "
                                               "overview.affine, or write them into the file)", series_id))
        self.count += 1
        parts = encode_overview(series_id, 0, self.count, loose.image, pixel, affine, loose.acquired)
        try:
            return Decoded(decode(parts, max(self.max_message_bytes, loose.image.nbytes + (1 << 20))), bytes(parts[0]))
        except ProtocolError as error:
            return Decoded(error=error)


class OverviewInputs:
    """The folder watcher and the endpoint, each in its own thread, handing `LooseOverview`s to `put`."""

    def __init__(self, settings, max_message_bytes: int, put: Callable[[LooseOverview | Decoded], None]):
        self.settings, self.max_message_bytes, self.put = settings.overview, max_message_bytes, put
        self.security = settings.security
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socket = None
        self._context = None
        self._guard: links.Guard | None = None

    def start(self) -> None:
        if self.settings.endpoint:
            self._context = zmq.Context()
            self._socket = self._context.socket(zmq.PULL)
            self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes)
            self._socket.setsockopt(zmq.RCVHWM, 2)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._guard = links.server_guard(self._context, self.security)  # senders need authorized keys
            links.bind(self._socket, self.settings.endpoint, self.security, self._guard)
            self._spawn(self._listen, "simed-overview-endpoint")
        if self.settings.dir is not None:
            self.settings.dir.mkdir(parents=True, exist_ok=True)
            self._spawn(self._watch, "simed-overview-folder")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close(0)
            if self._guard is not None:
                self._guard.stop()
            self._context.term()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            parts = [part.buffer for part in self._socket.recv_multipart(copy=False)]
            try:
                message = decode(parts, self.max_message_bytes)
                if not isinstance(message, OverviewImage):
                    raise ProtocolError(f"the overview endpoint takes overview_image messages, not {message.header['htype']}")
            except ProtocolError as error:
                self.put(Decoded(error=error))
                continue
            series = None if message.series_id == ANY_SERIES else message.series_id
            self.put(LooseOverview(message.image.copy(), float(message.header["pixel_size_A"]), message.affine,
                                   message.header["acquired"], f"sent overview {message.header['overview_id']}",
                                   series))

    def _watch(self) -> None:
        folder = self.settings.dir
        seen = {path.name: _stamp(path) for path in _candidates(folder)}  # already there: not this session's
        sizes: dict[str, tuple] = {}
        while not self._stop.wait(POLL_S):
            for path in _candidates(folder):
                stamp = _stamp(path)
                if stamp is None or seen.get(path.name) == stamp:
                    continue
                if sizes.get(path.name) != stamp:  # still being written: wait for one quiet poll
                    sizes[path.name] = stamp
                    continue
                seen[path.name] = stamp
                sizes.pop(path.name, None)
                self._read(path)
            if len(seen) > 10_000:
                seen = dict(list(seen.items())[-5000:])

    def _read(self, path: Path) -> None:
        try:
            overview = read_overview(path)
        except SimedError as error:
            self.put(Decoded(error=ProtocolError(f"overview file {error}")))
            return
        log.info("overview file %s: %s px", path.name, overview.image.shape)
        self.put(LooseOverview(overview.image, overview.pixel_size_A, overview.affine, self.settings.acquired,
                               path.name))


def _candidates(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    except OSError:
        return []


def _stamp(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat.st_size else None
