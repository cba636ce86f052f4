"""The batched phase-retrieval engine on a toy molecule whose answer is known exactly.

The toy: a few Gaussian "atoms" in a 35 Å box on a 64-point grid (0.547 Å pixels, the `cpu`
preset's pixel), its exact diffraction (|FFT σV|² cropped to 20 mrad) and a weak-phase low-res
image through the preset's defocus and aperture. Small enough for a test, hard enough that a
wrong support, projection or alignment shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simed_stream.arrays import crop_center, embed_center
from simed_stream.metrics import spatial_frequencies
from simed_stream.phasing.classical import Geometry
from simed_stream.phasing.consensus import crossing_A
from simed_stream.phasing.constraints import check_input, support_problem
from simed_stream.phasing.engine import EngineSettings, PhaseRetrievalEngine
from simed_stream.phasing.iterations import resample_real

GEOMETRY = Geometry(box_A=35.0, image_pixel_A=0.546875, image_size_px=32, wavelength_A=0.025079,
                    defocus_lr_A=-1000.0, cutoff_lr_mrad=5.0, max_angle_mrad=20.0)
SETTINGS = EngineSettings(starts=4, schedule=((2, 150), (1, 150)), er_iterations=30, keep=2, support_dilation_A=3.0)


def toy_particle(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(diffraction, low-res image, σV on the image grid) of a random 14-atom toy molecule."""
    rng = np.random.default_rng(seed)
    n, size, pixel = GEOMETRY.grid_px, GEOMETRY.image_size_px, GEOMETRY.image_pixel_A
    yy, xx = (np.mgrid[:n, :n] - n // 2) * pixel
    sigma_v = np.zeros((n, n))
    for y, x in rng.uniform(-5, 5, (14, 2)):
        sigma_v += 0.05 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.45**2))
    spectrum = np.fft.fftshift(np.fft.fft2(sigma_v))
    side = 2 * int(GEOMETRY.max_angle_mrad * 1e-3 / GEOMETRY.wavelength_A * GEOMETRY.box_A) + 1
    diffraction = crop_center(np.abs(spectrum) ** 2 / n**4, side)
    field = crop_center(sigma_v, size)
    k = spatial_frequencies((size, size), pixel)
    ctf = -2 * np.sin(np.pi * GEOMETRY.wavelength_A * GEOMETRY.defocus_lr_A * k**2)
    ctf[k > GEOMETRY.cutoff_lr_mrad * 1e-3 / GEOMETRY.wavelength_A] = 0
    image_lr = 1 + np.fft.ifft2(np.fft.fft2(field) * ctf).real + rng.normal(0, 0.002, (size, size))
    return diffraction, image_lr, field


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def toys():
    return [toy_particle(seed) for seed in range(3)]


def test_engine_recovers_a_known_molecule(toys):
    torch.manual_seed(0)
    engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
    result = engine(np.stack([t[0] for t in toys]), np.stack([t[1] for t in toys]))
    assert result.flags == [None, None, None]
    for i, (_, _, truth) in enumerate(toys):
        assert correlation(result.sigma_v[i], truth) > 0.97, i
        assert result.r_free[i] < 0.05 and result.r_work[i] < 0.05
        # the scale is physical: the recovered σV integrates to the truth's (the direct beam is
        # free, so the total comes from positivity and the support, within a few %)
        assert result.sigma_v[i].sum() == pytest.approx(truth.sum(), rel=0.1)
    # a solved particle's kept solutions agree to the edge of the data: PRTF crossing near 20 mrad
    data_limit_A = GEOMETRY.wavelength_A / (GEOMETRY.max_angle_mrad * 1e-3)
    assert np.all(result.resolution_A < 1.5 * data_limit_A)


def test_a_particle_gives_the_same_result_alone_or_in_a_batch(toys):
    engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
    batch = engine(np.stack([t[0] for t in toys]), np.stack([t[1] for t in toys]))
    alone = engine(toys[1][0][None], toys[1][1][None])
    np.testing.assert_allclose(alone.sigma_v[0], batch.sigma_v[1], atol=1e-5 * np.abs(batch.sigma_v[1]).max())


def test_bad_particles_are_flagged_and_the_rest_are_phased(toys):
    diffraction, image_lr, truth = toys[0]
    nan_pattern = diffraction.copy()
    nan_pattern[3, 4] = np.nan
    empty = np.zeros_like(diffraction)
    empty[diffraction.shape[0] // 2, diffraction.shape[1] // 2] = 1.0  # only the direct beam
    cases = [(nan_pattern, image_lr), (empty, image_lr), (diffraction, np.zeros_like(image_lr)),
             (diffraction, np.full_like(image_lr, np.nan)), (diffraction, image_lr)]
    engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
    result = engine(np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]))
    assert "non-finite" in result.flags[0] and "diffraction" in result.flags[0]
    assert "empty" in result.flags[1]
    assert "blank" in result.flags[2]
    assert "non-finite" in result.flags[3] and "low-res" in result.flags[3]
    assert result.flags[4] is None and correlation(result.sigma_v[4], truth) > 0.97
    assert np.all(result.sigma_v[:4] == 0) and np.all(np.isnan(result.resolution_A[:4]))
    assert check_input(diffraction[:-1], image_lr, GEOMETRY).startswith("diffraction must be square")


def test_supports_that_cannot_work_are_named():
    field = np.zeros((32, 32), bool)
    box = np.zeros((64, 64), bool)
    compact = field.copy()
    compact[10:20, 10:20] = True
    assert support_problem(compact, box | True) .startswith("support covers 100% of the box")
    whole = field | True
    whole[:2] = False
    assert "whole field" in support_problem(whole, box)
    assert "no particle" in support_problem(field, box)
    box[16:48, 16:48] = True
    assert support_problem(compact, box) is None


def test_no_bright_pixels_outside_the_molecule(toys):
    """The DiffraGAN 'hot pixel' (a bright corner pixel on every output) must not happen here:
    outside the support nothing may stand far above the output's own noise."""
    engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
    result = engine(np.stack([t[0] for t in toys]), np.stack([t[1] for t in toys]))
    for image, (_, _, truth) in zip(result.sigma_v, toys):
        outside = truth < 1e-3 * truth.max()
        outside[4:-4, 4:-4] &= True
        assert np.abs(image[outside]).max() < 0.1 * image.max()


def test_resampling_to_a_coarser_grid_keeps_a_band_limited_image():
    """Crop/zero-pad of the spectrum against numpy's FFT: values (not only shapes) are kept."""
    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(32, 32))
    spectrum = np.fft.fftshift(np.fft.fft2(coarse))
    spectrum[0, :] = spectrum[:, 0] = 0  # drop the Nyquist row/column: they are ambiguous
    coarse = np.fft.ifft2(np.fft.ifftshift(spectrum)).real
    fine_reference = np.fft.ifft2(np.fft.ifftshift(embed_center(spectrum, 64))).real * 4
    fine = resample_real(torch.as_tensor(coarse[None], dtype=torch.float64), 64)[0].numpy()
    np.testing.assert_allclose(fine, fine_reference, atol=1e-10)
    back = resample_real(torch.as_tensor(fine[None]), 32)[0].numpy()
    np.testing.assert_allclose(back, coarse, atol=1e-10)


def test_prtf_crossing_interpolates_and_reports_the_last_ring_when_never_crossed():
    frequency = np.arange(10) / 10.0
    curve = np.array([1, 1, 0.9, 0.8, 0.6, 0.2, 0.1, 0, 0, 0])
    # 1/e = 0.368 between ring 4 (0.6) and ring 5 (0.2): k = 0.4 + 0.1 * (0.6 - 0.368) / 0.4
    assert crossing_A(curve, frequency, 1 / np.e) == pytest.approx(1 / (0.4 + 0.1 * (0.6 - 1 / np.e) / 0.4))
    assert crossing_A(np.ones(10), frequency, 1 / np.e) == pytest.approx(1 / 0.9)
