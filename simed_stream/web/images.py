"""Images for the page as PNG: 8-bit grey, contrast from robust percentiles, encoded once and
kept in a small cache of fixed size (the web thread's own; no other thread touches it)."""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np
from PIL import Image

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
MAX_SIDE_PX = 1024  # a larger image (an overview) is binned by a whole factor to fit


def binning(shape: tuple[int, int], max_side: int = MAX_SIDE_PX) -> int:
    """The whole factor that brings the longer side of `shape` to at most `max_side`."""
    return max(1, -(-max(shape) // max_side))


def to_grey(image: np.ndarray, max_side: int = MAX_SIDE_PX) -> np.ndarray:
    """`image` (2-D, any real dtype, NaN allowed) as uint8: binned by `binning`, then the
    LOW..HIGH percentiles of its finite values stretched over 0..255."""
    array = np.asarray(image, np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a 2-D image is needed, not an array of shape {array.shape}")
    factor = binning(array.shape, max_side)
    if factor > 1:
        ny, nx = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
        array = array[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, np.uint8)
    low, high = np.percentile(array[finite], [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (np.where(finite, array, low) - low) / (high - low) if high > low else np.zeros(array.shape)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def png(image: np.ndarray, max_side: int = MAX_SIDE_PX) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_grey(image, max_side)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PngCache:
    """The last `capacity` PNGs made, by key; older ones are made again when asked for."""

    def __init__(self, capacity: int = 96):
        self.capacity = capacity
        self._kept: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        data = self._kept.get(key)
        if data is None:
            data = self._kept[key] = make()
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return data

    def __len__(self) -> int:
        return len(self._kept)
