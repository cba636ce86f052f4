"""Centred crops and embeddings of 2-D arrays: the one place the centre convention lives.

The centre of an n-pixel axis is pixel n // 2 (numpy's fftshift convention, where the direct
beam and the zero frequency sit), so a crop keeps pixels [n//2 - m//2, n//2 - m//2 + m) and an
embedding puts the small array back in exactly that place: `crop_center(embed_center(a, n), m)`
returns `a`.
"""

from __future__ import annotations

import numpy as np


def center_slices(outer: int, inner: int) -> tuple[slice, slice]:
    """Index of the central `inner`² block of an `outer`² array (last two axes)."""
    if inner > outer:
        raise ValueError(f"cannot take a {inner}-pixel centre of a {outer}-pixel axis")
    start = outer // 2 - inner // 2
    return slice(start, start + inner), slice(start, start + inner)


def crop_center(array: np.ndarray, size: int) -> np.ndarray:
    """The central size × size block of the last two axes (a view)."""
    rows = center_slices(array.shape[-2], size)[0]
    cols = center_slices(array.shape[-1], size)[1]
    return array[..., rows, cols]


def embed_center(array: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """`array` (last two axes square) placed in the centre of a size × size field of `fill`."""
    out = np.full(array.shape[:-2] + (size, size), fill, dtype=array.dtype)
    rows, cols = center_slices(size, array.shape[-1])
    out[..., rows, cols] = array
    return out


def crop_around(array: np.ndarray, centre_yx, size: int) -> np.ndarray | None:
    """The size × size block of the last two axes whose centre pixel (size // 2, as above) is
    `centre_yx` rounded to whole pixels — a view — or None where the block would leave the array."""
    r0, c0 = (int(round(v)) - size // 2 for v in centre_yx)
    if r0 < 0 or c0 < 0 or r0 + size > array.shape[-2] or c0 + size > array.shape[-1]:
        return None
    return array[..., r0 : r0 + size, c0 : c0 + size]
