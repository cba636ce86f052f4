"""Plain-numpy references for simed_stream.kernels, written for clarity rather than speed."""

from __future__ import annotations

import numpy as np


def sum_positions(frames, position_index, n_positions):
    """Loop over frames, adding each to its position's sum (uint32 or float32, like the kernel)."""
    sum_dtype = np.float32 if frames.dtype.kind == "f" else np.uint32
    sums = np.zeros((n_positions,) + frames.shape[1:], dtype=sum_dtype)
    counts = np.zeros(n_positions, dtype=np.int64)
    for frame, position in zip(frames, position_index):
        if position >= 0:
            sums[position] += frame.astype(sum_dtype)
            counts[position] += 1
    return sums, counts


def beam_centre(frame, radius_px=8.0, box_px=5):
    """Argmax of the zero-padded box sum, then the centre of mass inside a disc around it, re-centred."""
    image = np.nan_to_num(frame.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    h, w = image.shape
    before = box_px // 2
    padded = np.pad(image, ((before, box_px - 1 - before), (before, box_px - 1 - before)))
    box_sum = sum(padded[i:i + h, j:j + w] for i in range(box_px) for j in range(box_px))
    y0, x0 = np.unravel_index(np.argmax(box_sum), box_sum.shape)  # first maximum in row-major order
    y, x = np.mgrid[0:h, 0:w]

    def centre_of_mass(cy, cx):
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius_px**2
        total = image[inside].sum()
        if total <= 0:
            return np.nan, np.nan
        return (image[inside] * y[inside]).sum() / total, (image[inside] * x[inside]).sum() / total

    cy, cx = centre_of_mass(float(y0), float(x0))
    for _ in range(10):  # re-centre the window on the centre of mass until it stops moving
        if not np.isfinite([cy, cx]).all():
            break
        ny, nx = centre_of_mass(cy, cx)
        if not np.isfinite([ny, nx]).all():
            break
        moved = abs(ny - cy) + abs(nx - cx)
        cy, cx = ny, nx
        if moved < 1e-3:
            break
    return cy, cx


def apply_pixel_mask(frames, mask):
    """Each bad pixel becomes the mean of its good in-frame 8-neighbours (0 if none)."""
    out = frames.copy()
    h, w = mask.shape
    for frame_in, frame_out in zip(frames, out):
        for y, x in zip(*np.nonzero(mask)):
            values = [
                float(frame_in[yy, xx])
                for yy in range(y - 1, y + 2)
                for xx in range(x - 1, x + 2)
                if 0 <= yy < h and 0 <= xx < w and not mask[yy, xx]
            ]
            mean = np.mean(values) if values else 0.0
            frame_out[y, x] = np.floor(mean + 0.5) if frames.dtype.kind in "ui" else mean
    return out
