"""Serval's jsonimage frame stream, simulated: per frame a JSON header line and the pixels, in
either header variant (3.x/4.x `pixelFormat`, or the older `bitDepth`/`dataSize`/`measurementID`)
and either byte order. Listens (Serval's `tcp://listen@`) or connects (`tcp://connect@`)."""

from __future__ import annotations

import json
import time

import numpy as np

from simed_stream.detectors.tcp_sim import TcpSimulator
from simed_stream.detectors.vendor_sim import SimSeries


def jsonimage_header(pixels: np.ndarray, number: int, variant: str, measurement: int) -> bytes:
    h, w = pixels.shape
    if variant == "new":
        header = {"width": w, "height": h, "pixelFormat": f"uint{8 * pixels.itemsize}", "frameNumber": number,
                  "timeAtFrame": time.time_ns()}
    else:
        header = {"timeAtFrame": time.time_ns(), "frameNumber": number, "measurementID": measurement,
                  "dataSize": pixels.nbytes, "bitDepth": 8 * pixels.itemsize, "width": w, "height": h}
    return json.dumps(header).encode() + b"\n"


class ServalSimulator(TcpSimulator):
    def __init__(self, endpoint: str = "tcp://127.0.0.1:8088", variant: str = "new", byte_order: str = "big",
                 **options):
        if variant not in ("new", "old") or byte_order not in ("big", "little"):
            raise ValueError("variant is new or old, byte_order big or little")
        super().__init__(endpoint, **options)
        self.variant, self.order = variant, ">" if byte_order == "big" else "<"

    def begin_series(self, series: SimSeries) -> None:
        pass  # Serval announces nothing: the first frame begins the measurement

    def send_frame(self, series: SimSeries, index: int, pixels: np.ndarray, truncate: bool) -> None:
        data = self.cache.get(pixels, lambda: pixels.astype(pixels.dtype.newbyteorder(self.order)).tobytes())
        header = jsonimage_header(pixels, index, self.variant, series.number)
        self.sender.send(header, data[: len(data) // 2] if truncate else data)

    def send_garbage(self, data: bytes) -> None:
        self.sender.send(data.replace(b"{", b"("))
