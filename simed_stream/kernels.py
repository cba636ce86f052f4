"""Numba kernels for detector frames: position sums, beam centres, bad pixels; the descan fit.

Frames are 2-D detector images of dtype uint8, uint16, uint32 or float32; batches are (n, h, w).
Every public function is a plain Python wrapper that checks its arguments (ValueError with a
message naming the argument) and then calls a jitted core. The cores release the GIL
(`nogil=True`), so callers may run them in threads. They are serial on purpose: in the receiver
they share two cores with ZeroMQ, compression and HDF5, and a parallel region's worker threads
(OpenMP spins after each region) starved those threads — 0.85 ms instead of 20 µs to compress
a frame. Parallelism comes from the caller's threads. The descan fit is plain numpy: it runs
once per series, on one centre per scan position.

Coordinates are (y, x) = (row, column) in pixels; pixel (i, j) has its centre at (i, j).
"""

from __future__ import annotations

import math

import numba
import numpy as np

FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.float32))

# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_STD = 1.4826

# --------------------------------------------------------------------------------------------
# argument checks


def _as_frames(frames, ndim: int, name: str = "frames") -> np.ndarray:
    """`frames` as a C-contiguous array of a supported dtype and `ndim` dimensions."""
    array = np.asarray(frames)
    if array.ndim != ndim:
        layout = "(h, w)" if ndim == 2 else "(n, h, w)"
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {array.shape}")
    if array.dtype not in FRAME_DTYPES:
        allowed = ", ".join(str(dtype) for dtype in FRAME_DTYPES)
        raise ValueError(f"{name} has dtype {array.dtype}; supported: {allowed}")
    if min(array.shape[-2:]) < 1:
        raise ValueError(f"{name} has an empty frame shape {array.shape[-2:]}")
    # One memory layout keeps the number of compiled specialisations down.
    return np.ascontiguousarray(array)


def _positive_float(value, name: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def sum_dtype(frame_dtype) -> np.dtype:
    """Accumulator dtype for sums of frames: uint32 for integer frames, float32 for float32."""
    dtype = np.dtype(frame_dtype)
    if dtype not in FRAME_DTYPES:
        raise ValueError(f"frames have dtype {dtype}; supported: {', '.join(map(str, FRAME_DTYPES))}")
    # uint32 holds 65535 * 65537 frames of a saturated uint16 detector; uint32 frames (counting
    # detectors) hold small counts in practice and wrap past 2**32 - 1 as numpy would.
    return np.dtype(np.float32) if dtype.kind == "f" else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------
# 1. sums per scan position


@numba.njit(nogil=True, cache=True)
def _accumulate_core(frames, position_index, sums, counts):
    n = frames.shape[0]
    pixels = frames.shape[1] * frames.shape[2]
    flat_frames = frames.reshape(n, pixels)
    flat_sums = sums.reshape(sums.shape[0], pixels)
    # Frames outer, pixels inner (contiguous, vectorised): every sum element still receives its
    # frames in frame order, so float sums do not depend on how frames were split into messages.
    # A position's first frame is stored rather than added: a reused slot needs no zeroing.
    for i in range(n):
        position = position_index[i]
        if position < 0:
            continue
        frame, total = flat_frames[i], flat_sums[position]
        if counts[position] == 0:
            for k in range(pixels):
                total[k] = frame[k]
        else:
            for k in range(pixels):
                total[k] += frame[k]
        counts[position] += 1


def accumulate_positions(frames, position_index, sums: np.ndarray, counts: np.ndarray) -> None:
    """Add each frame to `sums[position_index[i]]` in place and count it; index -1 skips a frame.

    sums: (n_positions, h, w) of `sum_dtype(frames.dtype)`, C-contiguous; counts: (n_positions,)
    int64. A position whose count is 0 takes its first frame as it is (whatever its sum held:
    a reused slot needs no zeroing). Call batch after batch while streaming.
    """
    frames = _as_frames(frames, 3)
    n, h, w = frames.shape
    index = np.asarray(position_index)
    if index.ndim != 1 or index.shape[0] != n:
        raise ValueError(f"position_index must have shape ({n},) to match frames, got {index.shape}")
    if index.dtype.kind not in "iu":
        raise ValueError(f"position_index must hold integers, got dtype {index.dtype}")
    if not isinstance(sums, np.ndarray) or sums.ndim != 3 or sums.shape[1:] != (h, w):
        shape = getattr(sums, "shape", None)
        raise ValueError(f"sums must have shape (n_positions, {h}, {w}), got {shape}")
    if sums.dtype != sum_dtype(frames.dtype):
        raise ValueError(f"sums must have dtype {sum_dtype(frames.dtype)} for {frames.dtype} frames, got {sums.dtype}")
    n_positions = sums.shape[0]
    if not isinstance(counts, np.ndarray) or counts.shape != (n_positions,) or counts.dtype != np.int64:
        raise ValueError(f"counts must be int64 of shape ({n_positions},), got {getattr(counts, 'dtype', None)} "
                         f"{getattr(counts, 'shape', None)}")
    for name, array in (("sums", sums), ("counts", counts)):
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")
    if n and (index.min() < -1 or index.max() >= n_positions):
        bad = index[(index < -1) | (index >= n_positions)]
        raise ValueError(f"position_index values must lie in [-1, {n_positions - 1}], got {bad[:5].tolist()}")
    _accumulate_core(frames, index.astype(np.int64), sums, counts)


# --------------------------------------------------------------------------------------------
# 2. direct-beam centre


@numba.njit(nogil=True, cache=True)
def _pixel_value(value):
    """A pixel as float64; NaN and inf count as 0 so that one bad value cannot poison a sum."""
    number = np.float64(value)
    return number if math.isfinite(number) else 0.0


@numba.njit(nogil=True, cache=True)
def _brightest_box(frame, box_px):
    """(y, x) whose box_px x box_px box (clipped to the frame) has the largest sum; first wins."""
    h, w = frame.shape
    before = box_px // 2  # the box spans [y - before, y - before + box_px)
    # Row sums of the box from running (prefix) sums: O(1) per pixel, and exact for integer
    # frames because float64 holds their sums exactly.
    row_sums = np.empty((h, w), dtype=np.float64)
    prefix = np.empty(w + 1, dtype=np.float64)
    for y in range(h):
        prefix[0] = 0.0
        for x in range(w):
            prefix[x + 1] = prefix[x] + _pixel_value(frame[y, x])
        for x in range(w):
            row_sums[y, x] = prefix[min(w, x - before + box_px)] - prefix[max(0, x - before)]
    best = -np.inf
    best_y = 0
    best_x = 0
    box_sums = np.empty(w, dtype=np.float64)
    for y in range(h):
        # Whole rows at a time: the inner loop runs along memory and vectorises.
        box_sums[:] = 0.0
        for yy in range(max(0, y - before), min(h, y - before + box_px)):
            for x in range(w):
                box_sums[x] += row_sums[yy, x]
        for x in range(w):
            if box_sums[x] > best:  # strict: ties keep the first in row-major order
                best = box_sums[x]
                best_y = y
                best_x = x
    return best_y, best_x


@numba.njit(nogil=True, cache=True)
def _centre_of_mass(frame, cy, cx, radius_px):
    """Intensity-weighted mean (y, x) of pixels within radius_px of (cy, cx); NaN if no signal."""
    h, w = frame.shape
    radius_sq = radius_px * radius_px
    total = 0.0
    sum_y = 0.0
    sum_x = 0.0
    for y in range(max(0, int(math.ceil(cy - radius_px))), min(h, int(math.floor(cy + radius_px)) + 1)):
        for x in range(max(0, int(math.ceil(cx - radius_px))), min(w, int(math.floor(cx + radius_px)) + 1)):
            if (y - cy) ** 2 + (x - cx) ** 2 <= radius_sq:
                value = _pixel_value(frame[y, x])
                total += value
                sum_y += value * y
                sum_x += value * x
    if total <= 0.0:
        return np.nan, np.nan
    return sum_y / total, sum_x / total


#: Re-centring steps: the first window sits on the brightest box, which for a flat-topped
#: beam disc can be a few pixels off centre and cut the disc; each step re-centres the
#: window on the last centre of mass until it moves less than 0.001 px.
_RECENTRE_STEPS = 10


@numba.njit(nogil=True, cache=True)
def _beam_centre_core(frame, radius_px, box_px):
    y0, x0 = _brightest_box(frame, box_px)
    cy, cx = _centre_of_mass(frame, float(y0), float(x0), radius_px)
    for _ in range(_RECENTRE_STEPS):
        if not (math.isfinite(cy) and math.isfinite(cx)):
            break
        ny, nx = _centre_of_mass(frame, cy, cx, radius_px)
        if not (math.isfinite(ny) and math.isfinite(nx)):
            break
        moved = abs(ny - cy) + abs(nx - cx)
        cy, cx = ny, nx
        if moved < 1e-3:
            break
    return cy, cx


def beam_centre(frame, radius_px: float = 8.0, box_px: int = 5) -> tuple[float, float]:
    """Sub-pixel direct-beam centre (cy, cx) of one frame.

    The brightest box_px x box_px region (argmax of the box sum, first in row-major order on
    ties) locates the beam, so a single hot pixel, diluted by the box, loses to a beam disc;
    the centre of mass of pixels within radius_px of it, re-centred on itself until it stops
    moving (at most 10 steps), gives the sub-pixel centre. The window
    is clipped to the frame, so a beam cut by the edge gives a centre biased inward.
    A frame with no positive signal in the window (e.g. all zero) gives (nan, nan): callers
    mark that position invalid. NaN/inf pixels count as 0. Never raises on pixel values.
    """
    frame = _as_frames(frame, 2, "frame")
    cy, cx = _beam_centre_core(frame, _positive_float(radius_px, "radius_px"), _positive_int(box_px, "box_px"))
    return float(cy), float(cx)


# --------------------------------------------------------------------------------------------
# 3. hot and dead pixels (from the detector's mask)


@numba.njit(nogil=True, cache=True)
def _apply_mask_core(frames, out, mask, bad_y, bad_x, round_to_integer):
    n, h, w = frames.shape
    for i in range(n):
        for b in range(bad_y.shape[0]):
            y = bad_y[b]
            x = bad_x[b]
            total = 0.0
            good = 0
            for yy in range(max(0, y - 1), min(h, y + 2)):
                for xx in range(max(0, x - 1), min(w, x + 2)):
                    # Only good pixels are read: a bad neighbour never feeds another's value.
                    if not mask[yy, xx]:
                        total += np.float64(frames[i, yy, xx])
                        good += 1
            value = total / good if good else 0.0
            if round_to_integer:
                value = math.floor(value + 0.5)  # round half up; the mean of unsigned values is >= 0
            out[i, y, x] = value


def apply_pixel_mask(frames, mask) -> np.ndarray:
    """Replace each bad pixel (mask True) by the mean of its good 8-neighbours, 0 if none.

    mask: bool (h, w). frames: (h, w) or (n, h, w); returns a new array of the same shape and
    dtype, integer means rounded half up."""
    array = np.asarray(frames)
    if array.ndim not in (2, 3):
        raise ValueError(f"frames must be 2-D (h, w) or 3-D (n, h, w), got shape {array.shape}")
    stack = _as_frames(array if array.ndim == 3 else array[np.newaxis], 3)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != stack.shape[1:]:
        raise ValueError(f"mask must be bool of the frame shape {stack.shape[1:]}, got {mask.dtype} {mask.shape}")
    bad_y, bad_x = (np.ascontiguousarray(v, np.int64) for v in np.nonzero(mask))
    out = stack.copy()
    _apply_mask_core(stack, out, np.ascontiguousarray(mask), bad_y, bad_x, stack.dtype.kind != "f")
    return out if array.ndim == 3 else out[0]


def warm_up() -> None:
    """Compile, or load from numba's cache, every specialisation the receiver calls.

    On a cold cache that takes seconds, holding the GIL: the receiver calls this before it
    connects, so no series ever waits for the compiler while its frames queue up."""
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    for dtype in FRAME_DTYPES:
        sums = np.zeros((1, 4, 4), sum_dtype(dtype))
        frames = np.zeros((1, 4, 4), dtype)
        accumulate_positions(frames, np.zeros(1, np.int64), sums, np.zeros(1, np.int64))
        frames.flags.writeable = False  # the receiver sums frames in place, in ZeroMQ's read-only buffers
        accumulate_positions(frames, np.zeros(1, np.int64), sums, np.zeros(1, np.int64))
        beam_centre(sums[0])
        apply_pixel_mask(sums[0], mask)


# --------------------------------------------------------------------------------------------
# 4. descan: the beam centre's drift across the scan, fitted by a plane


def _plane_design(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Columns (1, x, y): coefficients are (a0, a_x, a_y)."""
    return np.column_stack([np.ones_like(x, dtype=np.float64), x, y])


def fit_descan_plane(centres_yx, valid, n_sigma: float = 3.0, iterations: int = 5) -> np.ndarray:
    """Fit c = a0 + a1 * x + a2 * y to each beam-centre coordinate over the scan: (2, 3).

    centres_yx: (ny, nx, 2); valid: bool (ny, nx) (non-finite centres count as invalid);
    x = scan column, y = scan row. Row 0 of the result fits cy, row 1 cx. Least squares, then
    `iterations` rounds that refit on the points whose residual is <= n_sigma * 1.4826 * MAD of
    the current inliers' residuals; each coordinate rejects its own outliers.
    """
    centres = np.asarray(centres_yx, dtype=np.float64)
    if centres.ndim != 3 or centres.shape[2] != 2:
        raise ValueError(f"centres_yx must have shape (ny, nx, 2), got {centres.shape}")
    valid = np.asarray(valid)
    if valid.shape != centres.shape[:2] or valid.dtype != np.bool_:
        raise ValueError(f"valid must be bool of shape {centres.shape[:2]}, got {valid.dtype} {valid.shape}")
    n_sigma = _positive_float(n_sigma, "n_sigma")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    usable = valid & np.all(np.isfinite(centres), axis=2)
    rows, cols = np.nonzero(usable)
    if rows.size < 3:
        raise ValueError(f"fit_descan_plane needs >= 3 valid positions, got {rows.size}")
    design = _plane_design(rows.astype(np.float64), cols.astype(np.float64))
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("valid positions all lie on one line of the scan: a plane is undetermined")
    return np.stack([_robust_plane(design, centres[rows, cols, c], n_sigma, int(iterations)) for c in range(2)])


def _robust_plane(design: np.ndarray, values: np.ndarray, n_sigma: float, iterations: int) -> np.ndarray:
    inliers = np.ones(values.size, dtype=bool)
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    for _ in range(iterations):
        residual = values - design @ coefficients
        spread = MAD_TO_STD * np.median(np.abs(residual[inliers] - np.median(residual[inliers])))
        # A floor keeps exact planes (spread 0) from rejecting points over rounding error.
        keep = np.abs(residual) <= max(n_sigma * spread, 1e-9)
        if keep.sum() < 3 or np.linalg.matrix_rank(design[keep]) < 3 or np.array_equal(keep, inliers):
            break
        inliers = keep
        coefficients = np.linalg.lstsq(design[inliers], values[inliers], rcond=None)[0]
    return coefficients
