"""simed_stream.kernels against the plain-numpy references and on synthetic and adversarial frames."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import reference_kernels as ref
from simed_stream import kernels

SHAPE = (256, 256)
BEAM_YX = (100.3, 140.7)
HOT_VALUE = 60000


def gaussian_beam(centre_yx, shape=SHAPE, sigma_px=2.0, peak=20000.0, background=2.0, seed=0):
    """uint16 Poisson frame: a Gaussian direct beam at a sub-pixel centre on a flat background."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    r_sq = (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2
    expected = background + peak * np.exp(-r_sq / (2 * sigma_px**2))
    return np.random.default_rng(seed).poisson(expected).astype(np.uint16)


def distance(a_yx, b_yx) -> float:
    return float(np.hypot(a_yx[0] - b_yx[0], a_yx[1] - b_yx[1]))


@pytest.fixture(scope="module")
def beam():
    return gaussian_beam(BEAM_YX)


# -- sums per position ------------------------------------------------------------------------


def _scan_batch(seed=1, n=40, n_positions=7, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    frames = rng.poisson(30.0, size=(n,) + shape).astype(np.uint16)
    frames[3] = 65535  # a saturated frame among them
    index = rng.integers(-1, n_positions, size=n)
    index[:2] = -1  # make sure some frames are skipped
    return frames, index, n_positions


def summed(frames, index, n_positions):
    """`accumulate_positions` into fresh zero sums, as the receiver starts a position."""
    sums = np.zeros((n_positions,) + frames.shape[1:], dtype=kernels.sum_dtype(frames.dtype))
    counts = np.zeros(n_positions, dtype=np.int64)
    kernels.accumulate_positions(frames, index, sums, counts)
    return sums, counts


def test_sum_positions_equals_reference_exactly():
    frames, index, n_positions = _scan_batch()
    sums, counts = summed(frames, index, n_positions)
    want_sums, want_counts = ref.sum_positions(frames, index, n_positions)
    assert sums.dtype == np.uint32 and counts.dtype == np.int64
    np.testing.assert_array_equal(sums, want_sums)
    np.testing.assert_array_equal(counts, want_counts)
    assert counts.sum() == np.count_nonzero(index >= 0)


def test_accumulating_two_batches_equals_one_call():
    frames, index, n_positions = _scan_batch()
    sums = np.zeros((n_positions,) + frames.shape[1:], dtype=kernels.sum_dtype(frames.dtype))
    counts = np.zeros(n_positions, dtype=np.int64)
    kernels.accumulate_positions(frames[:17], index[:17], sums, counts)
    kernels.accumulate_positions(frames[17:], index[17:], sums, counts)
    one_sums, one_counts = ref.sum_positions(frames, index, n_positions)
    np.testing.assert_array_equal(sums, one_sums)
    np.testing.assert_array_equal(counts, one_counts)


def test_a_position_with_no_frames_yet_takes_its_first_frame_whatever_its_slot_held():
    """The receiver reuses a slot without zeroing it: count 0 means its content is ignored."""
    frames, index, n_positions = _scan_batch()
    sums = np.full((n_positions,) + frames.shape[1:], 123456, dtype=np.uint32)  # a previous position's sum
    counts = np.zeros(n_positions, dtype=np.int64)
    kernels.accumulate_positions(frames, index, sums, counts)
    want_sums, want_counts = ref.sum_positions(frames, index, n_positions)
    used = want_counts > 0
    np.testing.assert_array_equal(sums[used], want_sums[used])
    assert (sums[~used] == 123456).all()  # a slot no frame went to is left alone


def test_saturated_uint16_sum_does_not_overflow():
    frames = np.full((5, 16, 16), 65535, dtype=np.uint16)
    sums, counts = summed(frames, np.zeros(5, dtype=np.int64), 1)
    assert sums.dtype == np.uint32 and np.all(sums == 5 * 65535) and counts[0] == 5


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_sum_positions_other_dtypes(dtype):
    rng = np.random.default_rng(2)
    frames = rng.poisson(20.0, size=(12, 32, 32)).astype(dtype)
    index = rng.integers(-1, 3, size=12)
    sums, counts = summed(frames, index, 3)
    want_sums, want_counts = ref.sum_positions(frames, index, 3)
    assert sums.dtype == want_sums.dtype
    # Integer-valued float32 sums below 2**24 are exact, so both dtypes compare exactly.
    np.testing.assert_array_equal(sums, want_sums)
    np.testing.assert_array_equal(counts, want_counts)


# -- beam centre ------------------------------------------------------------------------------


def test_beam_centre_equals_reference_on_poisson_noise():
    frames = np.random.default_rng(3).poisson(5.0, size=(4,) + SHAPE).astype(np.uint16)
    for frame in frames:
        np.testing.assert_allclose(kernels.beam_centre(frame), ref.beam_centre(frame), rtol=0, atol=1e-9)


def test_beam_centre_recovers_gaussian_beam(beam):
    centre = kernels.beam_centre(beam)
    assert distance(centre, BEAM_YX) < 0.05
    np.testing.assert_allclose(centre, ref.beam_centre(beam), rtol=0, atol=1e-9)


def test_beam_centre_ignores_hot_pixels(beam):
    frame = beam.copy()
    for y, x in [(10, 10), (200, 30), (240, 250)]:  # far from the beam
        frame[y, x] = HOT_VALUE
    assert distance(kernels.beam_centre(frame), BEAM_YX) < 0.1


def test_beam_centre_float32_frame(beam):
    centre = kernels.beam_centre(beam.astype(np.float32))
    np.testing.assert_allclose(centre, kernels.beam_centre(beam), rtol=0, atol=1e-9)


def test_beam_at_the_edge_gives_a_finite_centre_near_truth():
    truth = (2.2, 253.4)
    frame = gaussian_beam(truth, seed=4)
    centre = kernels.beam_centre(frame)
    # The window is clipped by the frame edge, so the centre is biased inward (~0.4 px here).
    assert np.all(np.isfinite(centre)) and distance(centre, truth) < 1.0
    np.testing.assert_allclose(centre, ref.beam_centre(frame), rtol=0, atol=1e-9)


def test_all_zero_frame_gives_nan_centre():
    assert np.all(np.isnan(kernels.beam_centre(np.zeros(SHAPE, dtype=np.uint16))))


def test_saturated_frame_gives_the_centre_of_its_first_box():
    """A flat frame: every box ties, the first (clipped by the corner) wins, and the clipped
    disc's centre of mass moves inward step by step, exactly as the reference computes it."""
    frame = np.full(SHAPE, 65535, dtype=np.uint16)
    centre = kernels.beam_centre(frame)
    assert np.all(np.isfinite(centre))
    np.testing.assert_allclose(centre, ref.beam_centre(frame), rtol=0, atol=1e-9)


# -- bad pixels -------------------------------------------------------------------------------

HOT = [(5, 7), (30, 90), (64, 64), (100, 12), (127, 127)]
DEAD = [(0, 50), (77, 33), (110, 100)]


@pytest.fixture(scope="module")
def mean_frame():
    """Mean of 200 Poisson exposures of a smooth pattern, with hot and dead pixels injected."""
    y, x = np.mgrid[0:128, 0:128]
    expected = 40.0 + 60.0 * np.exp(-((y - 60) ** 2 + (x - 70) ** 2) / (2 * 40.0**2))
    mean = np.random.default_rng(5).poisson(expected * 200) / 200
    for y, x in HOT:
        mean[y, x] += 50.0
    for y, x in DEAD:
        mean[y, x] = 0.0
    return mean


def injected_mask(shape=(128, 128)):
    mask = np.zeros(shape, bool)
    for y, x in HOT + DEAD:
        mask[y, x] = True
    return mask


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_apply_pixel_mask_equals_reference(mean_frame, dtype):
    mask = injected_mask()
    mask[126:128, 126:128] = True  # a corner cluster: neighbours that are bad themselves
    mask[0:3, 0:3] = True  # the corner pixel (0, 0) has no good neighbour: 0
    frames = np.random.default_rng(6).poisson(mean_frame, size=(3,) + mean_frame.shape).astype(dtype)
    fixed = kernels.apply_pixel_mask(frames, mask)
    assert fixed.dtype == frames.dtype
    np.testing.assert_allclose(fixed, ref.apply_pixel_mask(frames, mask), rtol=1e-6, atol=0)
    assert np.all(fixed[:, 0, 0] == 0)
    np.testing.assert_array_equal(fixed[:, ~mask], frames[:, ~mask])
    np.testing.assert_array_equal(kernels.apply_pixel_mask(frames[1], mask), fixed[1])
    assert not np.array_equal(fixed, frames)  # the injected pixels did change


# -- descan -----------------------------------------------------------------------------------

TRUE_PLANE = np.array([[120.0, 0.05, -0.03], [131.0, -0.02, 0.04]])  # (a0, a_x, a_y) for cy, cx


def plane_values(coefficients, ny, nx):
    """c = a0 + a_x * x + a_y * y on an (ny, nx) scan: (ny, nx, 2) of (cy, cx)."""
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    return np.stack([a0 + ax * x + ay * y for a0, ax, ay in coefficients], axis=-1)


def _descan_scan(seed=7, ny=24, nx=30):
    rng = np.random.default_rng(seed)
    centres = plane_values(TRUE_PLANE, ny, nx) + rng.normal(0, 0.05, size=(ny, nx, 2))
    outliers = rng.random((ny, nx)) < 0.10
    centres[outliers] += rng.uniform(5, 20, size=(outliers.sum(), 2)) * rng.choice([-1, 1], size=(outliers.sum(), 2))
    valid = np.ones((ny, nx), dtype=bool)
    valid[0, :5] = False
    centres[0, :5] = np.nan  # invalid positions may hold anything
    return centres, valid


def test_descan_fit_recovers_the_plane_despite_outliers():
    centres, valid = _descan_scan()
    fitted = kernels.fit_descan_plane(centres, valid)
    assert fitted.shape == (2, 3)
    np.testing.assert_allclose(fitted[:, 0], TRUE_PLANE[:, 0], atol=0.02)  # offsets, px
    np.testing.assert_allclose(fitted[:, 1:], TRUE_PLANE[:, 1:], atol=0.002)  # slopes, px per scan step
    # Without rejection the outliers pull the fit well outside those tolerances.
    plain = kernels.fit_descan_plane(centres, valid, iterations=0)
    assert np.abs(plain - TRUE_PLANE).max() > 0.05


def test_descan_fit_needs_three_points_off_one_line():
    centres, _ = _descan_scan()
    valid = np.zeros(centres.shape[:2], dtype=bool)
    valid[5, 5] = valid[6, 9] = True
    with pytest.raises(ValueError, match=">= 3 valid positions, got 2"):
        kernels.fit_descan_plane(centres, valid)
    valid[:] = False
    valid[4, :] = True
    with pytest.raises(ValueError, match="one line"):
        kernels.fit_descan_plane(centres, valid)


# -- bad inputs -------------------------------------------------------------------------------

FRAMES = np.zeros((4, 8, 8), dtype=np.uint16)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: summed(FRAMES[0], [0], 2), r"frames must be 3-D"),
        (lambda: summed(FRAMES, [0, 1, 0], 2), r"position_index must have shape \(4,\)"),
        (lambda: summed(FRAMES, [0, 1, 2, 0], 2), r"\[-1, 1\], got \[2\]"),
        (lambda: summed(FRAMES, [0, -2, 1, 0], 2), r"\[-1, 1\], got \[-2\]"),
        (lambda: summed(FRAMES, [0.0, 1.0, 0.0, 1.0], 2), r"must hold integers"),
        (lambda: kernels.sum_dtype(np.int16), r"dtype int16; supported"),
        (lambda: kernels.accumulate_positions(FRAMES, [0] * 4, np.zeros((2, 8, 8), np.uint16), np.zeros(2, np.int64)),
         r"sums must have dtype uint32"),
        (lambda: kernels.accumulate_positions(FRAMES, [0] * 4, np.zeros((2, 8, 9), np.uint32), np.zeros(2, np.int64)),
         r"sums must have shape"),
        (lambda: kernels.accumulate_positions(FRAMES, [0] * 4, np.zeros((2, 8, 8), np.uint32), np.zeros(3, np.int64)),
         r"counts must be int64 of shape \(2,\)"),
        (lambda: kernels.beam_centre(FRAMES), r"frame must be 2-D"),
        (lambda: kernels.beam_centre(FRAMES[0], radius_px=0), r"radius_px must be a finite number > 0"),
        (lambda: kernels.beam_centre(FRAMES[0], box_px=2.5), r"box_px must be an integer >= 1"),
        (lambda: kernels.apply_pixel_mask(FRAMES, np.zeros((8, 9), bool)), r"mask must be bool of the frame shape"),
        (lambda: kernels.apply_pixel_mask(FRAMES, np.zeros((8, 8), int)), r"mask must be bool"),
        (lambda: kernels.apply_pixel_mask(FRAMES[0, 0], np.zeros(8, bool)), r"frames must be 2-D \(h, w\) or 3-D"),
        (lambda: kernels.fit_descan_plane(np.zeros((3, 3)), np.ones((3, 3), bool)), r"centres_yx must have shape"),
        (lambda: kernels.fit_descan_plane(np.zeros((3, 3, 2)), np.ones((3, 4), bool)), r"valid must be bool of shape"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_out_of_range_index_is_rejected_before_any_work():
    sums = np.zeros((2, 8, 8), dtype=np.uint32)
    counts = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError):
        kernels.accumulate_positions(FRAMES + 1, [0, 1, 5, 0], sums, counts)
    assert not sums.any() and not counts.any()


def test_kernels_called_from_threads_agree_with_serial_calls():
    frames = [gaussian_beam(BEAM_YX, seed=i) for i in range(4)]
    serial = [kernels.beam_centre(frame) for frame in frames]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(kernels.beam_centre, frames * 2))
    assert threaded == serial * 2


def test_warm_up_compiles_every_specialisation_the_receiver_calls():
    """After warm_up nothing the receiver calls compiles again (a cold start compiled for
    seconds while a series' frames queued up): every dtype, at a real frame size."""
    kernels.warm_up()
    cores = (kernels._accumulate_core, kernels._beam_centre_core, kernels._apply_mask_core)
    before = [len(core.signatures) for core in cores]
    mask = np.zeros((64, 64), bool)
    mask[3, 4] = True
    for dtype in kernels.FRAME_DTYPES:
        frames = np.ones((3, 64, 64), dtype)
        sums = np.zeros((2, 64, 64), kernels.sum_dtype(dtype))
        counts = np.zeros(2, np.int64)
        kernels.accumulate_positions(frames, np.array([0, 1, 0]), sums, counts)
        kernels.beam_centre(sums[0][10:30, 5:40])  # a window of a sum, as the receiver searches
        kernels.apply_pixel_mask(sums[1], mask)
    assert [len(core.signatures) for core in cores] == before
