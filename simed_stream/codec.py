"""The codec of frames and position sums: one Blosc chunk (bitshuffle + LZ4) per frame.

Detector vendors store frames this way. The receiver compresses every frame and every position
sum once, in threads (numcodecs' Blosc releases the GIL; bitshuffle's own binding holds it), and
writes the chunks as they are into the capture (HDF5 direct chunk writes, filter 32001). The
live pipeline keeps position sums in that form until it needs them and decodes them here;
`simed reprocess` reads the same chunks from the capture and decodes them here too.
"""

from __future__ import annotations

import hdf5plugin
import numpy as np

LEVEL = 5  # Blosc's level for LZ4: as fast as 1 on detector frames, and smaller (tools/bench_ingest.py)
_BITSHUFFLE = 2
_CODEC = None


def _codec():
    global _CODEC
    if _CODEC is None:
        from numcodecs import Blosc, blosc

        blosc.use_threads = False  # our threads call it; Blosc must not start its own
        _CODEC = Blosc(cname="lz4", clevel=LEVEL, shuffle=Blosc.BITSHUFFLE)
    return _CODEC


def compress_frame(frame: np.ndarray) -> bytes:
    """One frame (or sum) as a chunk for an HDF5 direct chunk write."""
    from numcodecs import blosc

    _codec()  # Blosc set up for our threads
    # numcodecs' own function, not its codec's `encode`: the same bytes without its per-call checks
    return blosc.compress(np.ascontiguousarray(frame), b"lz4", LEVEL, _BITSHUFFLE)


def compress_frames(frames: np.ndarray, pool=None) -> list[bytes]:
    """`compress_frame` over a batch: the first half in `pool` (an executor, when given), the rest here."""
    if pool is None or len(frames) < 4:
        return [compress_frame(frame) for frame in frames]
    middle = len(frames) // 2
    first = pool.submit(lambda: [compress_frame(frame) for frame in frames[:middle]])
    second = [compress_frame(frame) for frame in frames[middle:]]
    return first.result() + second


def decompress_frame(chunk: bytes, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """The array `compress_frame` compressed (read-only: it shares the decoded buffer)."""
    return np.frombuffer(_codec().decode(chunk), dtype=dtype).reshape(shape)


def hdf5_filter() -> hdf5plugin.Blosc:
    """The HDF5 filter matching `compress_frame`, for datasets whose chunks it writes."""
    return hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
