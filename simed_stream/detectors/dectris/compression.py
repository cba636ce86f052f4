"""DECTRIS frame compressions: bitshuffle + LZ4 and LZ4, in the HDF5 framing (stream v2's tag
56500, stream v1's `bsNN-lz4<`) and as a bare LZ4 block (stream v1's `lz4<`).

Decoding uses DECTRIS's own `dectris-compression` and `lz4`; encoding (for the simulator) uses
`bitshuffle` and `lz4`, so an encoder and a decoder written by different people meet in the
tests. A declared size is checked against the caller's limit, and against what the compressed
bytes could possibly hold, before anything is allocated.
"""

from __future__ import annotations

import struct

import lz4.block
import numpy as np

HDF5_HEADER = struct.Struct(">QI")  # uncompressed bytes, block size in bytes
DEFAULT_BLOCK_BYTES = 8192  # bitshuffle's default block for 1-, 2- and 4-byte elements
ALGORITHMS = ("bslz4", "lz4")
# LZ4 cannot expand more than 255× (a match's length grows by at most 255 per input byte): a
# blob declaring more is broken or hostile, and refusing it spares allocating the declared size
# (the libraries allocate it before they look at the data). The slack covers tiny blobs' headers.
MAX_LZ4_RATIO = 255
LZ4_SLACK_BYTES = 4096


class CompressionError(ValueError):
    pass


def _check_ratio(size: int, compressed_bytes: int, what: str) -> None:
    if size > MAX_LZ4_RATIO * compressed_bytes + LZ4_SLACK_BYTES:
        raise CompressionError(f"{what} of {compressed_bytes} bytes declares {size} bytes, more than LZ4 "
                               f"can expand to ({MAX_LZ4_RATIO}×)")


def declared_size(blob) -> int:
    """The uncompressed size an HDF5-framed blob declares (0 when the header is blank)."""
    if len(blob) < HDF5_HEADER.size:
        raise CompressionError(f"compressed data of {len(blob)} bytes is shorter than its 12-byte header")
    return HDF5_HEADER.unpack_from(blob)[0]


def decompress_hdf5(blob, algorithm: str, elem_size: int, limit: int, expected: int | None = None) -> bytes:
    """An HDF5-framed `bslz4` or `lz4` blob, at most `limit` bytes once decoded (and exactly
    `expected`, when given). A blank header (some senders leave it zero) takes `expected`."""
    from dectris.compression import decompress

    if algorithm not in ALGORITHMS:
        raise CompressionError(f"compression {algorithm!r} is not one of {ALGORITHMS}")
    size = declared_size(blob)
    if size == 0 and expected:
        blob = HDF5_HEADER.pack(expected, DEFAULT_BLOCK_BYTES) + bytes(memoryview(blob)[HDF5_HEADER.size:])
        size = expected
    if not 0 < size <= limit:
        raise CompressionError(f"compressed data declares {size} bytes; the limit is {limit}")
    if expected is not None and size != expected:
        raise CompressionError(f"compressed data declares {size} bytes; the frame has {expected}")
    _check_ratio(size, len(blob), f"{algorithm} data")
    try:
        data = decompress(bytes(blob) if not isinstance(blob, bytes) else blob, algorithm, elem_size=elem_size)
    except Exception as error:  # the library raises RuntimeError, SystemError, ... on bad input
        raise CompressionError(f"{algorithm} data does not decompress ({error.__class__.__name__})") from None
    if len(data) != size:
        raise CompressionError(f"{algorithm} data decompressed to {len(data)} bytes, not {size}")
    return data


def decompress_lz4_block(blob, expected: int) -> bytes:
    """A bare LZ4 block of exactly `expected` bytes once decoded."""
    _check_ratio(expected, len(blob), "an lz4 block")
    try:
        data = lz4.block.decompress(bytes(blob), uncompressed_size=expected)
    except lz4.block.LZ4BlockError as error:
        raise CompressionError(f"lz4 data does not decompress ({error})") from None
    if len(data) != expected:
        raise CompressionError(f"lz4 data decompressed to {len(data)} bytes, not {expected}")
    return data


# ---------------------------------------------------------------- encoding (the simulator's)

def compress_bslz4(array: np.ndarray) -> bytes:
    """Bitshuffle + LZ4 with the HDF5 filter's 12-byte header, default blocks."""
    import bitshuffle

    array = np.ascontiguousarray(array)
    body = bitshuffle.compress_lz4(array.reshape(-1), DEFAULT_BLOCK_BYTES // array.itemsize)
    return HDF5_HEADER.pack(array.nbytes, DEFAULT_BLOCK_BYTES) + body.tobytes()


def compress_lz4_hdf5(data: bytes, block_bytes: int = 1 << 16) -> bytes:
    """LZ4 in the HDF5 LZ4 filter's framing: header, then per block its size and the LZ4 block."""
    out = [HDF5_HEADER.pack(len(data), block_bytes)]
    for start in range(0, len(data), block_bytes):
        raw = data[start:start + block_bytes]
        block = lz4.block.compress(raw, store_size=False)
        block = raw if len(block) >= len(raw) else block  # the framing's rule: a block of full size is stored raw
        out += [struct.pack(">I", len(block)), block]
    return b"".join(out)


def compress_lz4_block(data: bytes) -> bytes:
    return lz4.block.compress(data, store_size=False)
