"""The fuzz tests' corpus: one small series (a 2×3 scan, one 8×6 frame a position) as each of the
project's detector simulators sends it, recorded message by message instead of sent, so the
tests can mutate, drop and repeat messages and know what every frame should become."""

from __future__ import annotations

import numpy as np

from detector_streams import scan_source, unique_frames
from simed_stream.detectors.dectris.sim import DectrisSimulator
from simed_stream.detectors.merlin.sim import MerlinSimulator
from simed_stream.detectors.serval.sim import ServalSimulator

SCAN = (2, 3)
SHAPE = (8, 6)


class RecordingDectris(DectrisSimulator):
    """The project's DECTRIS simulator, its messages kept instead of pushed (the corpus to mutate)."""

    def __init__(self, version: int, compression: str):
        super().__init__(f"inproc://fuzz-dectris-{version}-{compression}", version, compression)
        self.sent: list[list[bytes]] = []

    def send(self, parts: list) -> None:
        self.sent.append([bytes(part) for part in parts])


def recorded_series(version: int, compression: str, mask: bool = False, number: int = 1) -> list[list[bytes]]:
    """A whole series (start, 6 frames, end) as the simulator sends it; `number` is the detector's
    series number, so the receiver's series id is `dectris-<number>`."""
    sim = RecordingDectris(version, compression)
    sim.series_count = number - 1  # the simulator numbers its series from 1
    try:
        source = scan_source("d", SCAN, 1, frames=unique_frames(6, shape=SHAPE, dtype="<u2"))
        if mask:
            source.pixel_mask = np.eye(*SHAPE, dtype=np.uint8)
        sim.stream(source)
    finally:
        sim.close()
    return sim.sent


#: {(version, compression): messages}; stream v2 with a pixel mask, (1, "mask"): stream v1 with one
DECTRIS_SERIES = {(version, compression): recorded_series(version, compression, mask=version == 2)
                  for version in (1, 2) for compression in ("bslz4", "lz4", "none")}
DECTRIS_SERIES[(1, "mask")] = recorded_series(1, "bslz4", mask=True)


class Recorder:
    """Stands in for the simulators' TCP sender: each message's bytes kept in order."""

    def __init__(self):
        self.messages: list[bytes] = []

    def send(self, *chunks: bytes) -> None:
        self.messages.append(b"".join(bytes(c) for c in chunks))

    def flush(self) -> None:
        pass

    disconnect = close = flush


def recorded(simulator_class, **options) -> list[bytes]:
    """One series (2×3 scan, 6 frames) as the project's simulator writes it, message by message."""
    sim = simulator_class("tcp://127.0.0.1:0", **options)
    sim.sender.close()
    sim.sender = Recorder()
    sim.stream(scan_source("t", SCAN, 1, frames=unique_frames(6, shape=SHAPE, dtype="<u2")))
    return sim.sender.messages


def merlin_series(number: int) -> list[bytes]:
    """The recorded Merlin series with an acquisition header whose time stamp is `number`'s 19
    digits (same length, so the MPX length still holds): the receiver names it `merlin-<digits>`."""
    header = TCP_SERIES["merlin"][0]
    start = header.index(b"hr min s):\t") + len(b"hr min s):\t")
    stamp = f"{number:019d}".encode()
    return [header[:start] + stamp + header[start + len(stamp):]] + TCP_SERIES["merlin"][1:]


#: {kind: messages}; Merlin: [HDR, 6 × MQ1], each a whole MPX message; Serval: 6 × (header line + pixels)
TCP_SERIES = {"merlin": recorded(MerlinSimulator), "serval-new": recorded(ServalSimulator, variant="new"),
              "serval-old": recorded(ServalSimulator, variant="old", byte_order="little")}
