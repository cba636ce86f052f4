"""A Merlin's data port, simulated: per series an acquisition header, then each frame as an MQ1
message with big-endian pixels (U08 for 6-bit, U16 for 12-bit, U32 for 24-bit counters)."""

from __future__ import annotations

import functools
import time

import numpy as np

from simed_stream.detectors.tcp_sim import TcpSimulator
from simed_stream.detectors.vendor_sim import SimSeries

DEPTHS = {1: (6, "U08", ">u1"), 2: (12, "U16", ">u2"), 4: (24, "U32", ">u4")}


def mpx(payload: bytes) -> bytes:
    return b"MPX,%010d," % (len(payload) + 1) + payload


def acquisition_header(frames: int, per_trigger: int, depth: int) -> bytes:
    stamp = time.strftime("%d/%m/%Y %H:%M:%S")
    return ("HDR,\t\n"
            f"Time and Date Stamp (day, mnth, yr, hr min s):\t{stamp}\n"
            "Chip ID:\tW000_S0,-,-,-\nChip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX\n"
            "Assembly Size (NX1, 2X2):\t   1x1\nChip Mode  (SPM, CSM, CM, CSCM):\tSPM\n"
            f"Counter Depth (number):\t{depth}\nGain:\tSLGM\nActive Counters:\tAlternating\n"
            f"Frames in Acquisition (Number):\t{frames}\nFrames per Trigger (Number):\t{per_trigger}\n"
            "Readout System:\tsimed Merlin simulator\nEnd\t").encode("latin-1")


def frame_header(sequence: int, shape: tuple[int, int], pixel_type: str, depth: int, size: int = 384) -> bytes:
    """An MQ1 header: the fields a Merlin writes, NUL-padded to `size`; the sequence number last to vary."""
    return b"MQ1,%06d" % sequence + _header_tail(shape, pixel_type, depth, size, int(time.time()))


@functools.lru_cache(maxsize=8)
def _header_tail(shape: tuple[int, int], pixel_type: str, depth: int, size: int, second: int) -> bytes:
    h, w = shape
    stamp = time.gmtime(second)
    text = (f",{size:05d},01,{w:04d},{h:04d},{pixel_type},   1x1,01,"
            f"{time.strftime('%Y-%m-%d %H:%M:%S', stamp)}.000000,0.000500,0,0,0,"
            + ",".join(["0.000000E+0"] * 8) + ",3RX," + ",".join(["000"] * 27)
            + f",MQ1A,{time.strftime('%Y-%m-%dT%H:%M:%S', stamp)}.000000000Z,500000ns,{depth},")
    return text.encode("latin-1").ljust(size - 10, b"\x00")


def _big_endian(pixels: np.ndarray, wire: str, depth: int) -> bytes:
    if depth == 24 and pixels.max(initial=0) >= 1 << 24:
        raise ValueError("a 24-bit Merlin counts below 2**24")
    return pixels.astype(wire).tobytes()


class MerlinSimulator(TcpSimulator):
    def __init__(self, endpoint: str = "tcp://127.0.0.1:6342", **options):
        super().__init__(endpoint, **options)

    def begin_series(self, series: SimSeries) -> None:
        depth = DEPTHS[series.dtype.itemsize][0]
        self.sender.send(mpx(acquisition_header(series.frames, series.sig_shape[1], depth)))

    def send_frame(self, series: SimSeries, index: int, pixels: np.ndarray, truncate: bool) -> None:
        depth, pixel_type, wire = DEPTHS[pixels.itemsize]
        data = self.cache.get(pixels, lambda: _big_endian(pixels, wire, depth))
        header = frame_header(index + 1, pixels.shape, pixel_type, depth)
        prefix = b"MPX,%010d," % (len(header) + len(data) + 1)
        if truncate:
            self.sender.send(prefix, header, data[: len(data) // 2])
        else:
            self.sender.send(prefix, header, data)

    def send_garbage(self, data: bytes) -> None:
        self.sender.send(data.replace(b"MPX,", b"mpx,"))
