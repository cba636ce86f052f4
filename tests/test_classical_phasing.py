"""Classical phase retrieval on simulated ubiquitin (the `cpu` preset)."""

import h5py
import numpy as np
import pytest
from scipy import ndimage

from simed_stream.metrics import frc
from simed_stream.phasing.classical import Geometry, low_res_support, measured_amplitudes, phase


@pytest.fixture(scope="module")
def sample(physics_dataset):
    with h5py.File(physics_dataset) as f:
        geometry = Geometry.from_attrs(f.attrs)
        return geometry, {k: f[k][0].astype(np.float64) for k in ("diffraction", "image_lr", "potential", "image_hr")}


def _on_grid(image, geometry):
    n, s = geometry.grid_px, geometry.image_size_px
    full = np.zeros((n, n))
    full[n // 2 - s // 2 : n // 2 - s // 2 + s, n // 2 - s // 2 : n // 2 - s // 2 + s] = image
    return full


def test_measured_amplitudes_are_those_of_sigma_v(sample):
    """√diffraction, scaled to the DFT, equals |FFT(σV)| (σ = 0.000727 rad/(V·Å) at 200 kV)."""
    geometry, data = sample
    amplitude, known, _ = measured_amplitudes(data["diffraction"], geometry)
    reference = np.abs(np.fft.fft2(_on_grid(data["potential"], geometry)))
    sigma = (amplitude[known] * reference[known]).sum() / (reference[known] ** 2).sum()
    assert sigma == pytest.approx(7.27e-4, rel=0.02)
    assert np.corrcoef(amplitude[known], reference[known])[0, 1] > 0.99


def test_hio_recovers_the_molecule_from_its_diffraction_given_a_tight_support(sample):
    geometry, data = sample
    truth = _on_grid(data["potential"], geometry)
    support = ndimage.binary_dilation(truth > 0.02 * truth.max(), iterations=3)
    phased = phase(data["diffraction"], data["image_lr"], geometry, support=support)
    resolution = frc(phased, data["potential"], geometry.image_pixel_A).resolution_A(0.5)
    low_res = frc(data["image_lr"], data["potential"], geometry.image_pixel_A).resolution_A(0.5)
    assert resolution < 4.0 < low_res  # beyond the 5 Å the low-res image carries (data: 1.25 Å)


def test_hio_from_the_low_res_image_alone_phases_small_proteins(physics_dataset):
    """No oracle: support, start, origin and twin all from the noisy low-res image."""
    with h5py.File(physics_dataset) as f:
        geometry = Geometry.from_attrs(f.attrs)
        results = []
        for i in range(3):
            phased = phase(f["diffraction"][i].astype(float), f["image_lr"][i].astype(float), geometry)
            results.append(frc(phased, f["potential"][i], geometry.image_pixel_A).resolution_A(0.5))
    assert np.median(results) < 2.5, results  # ubiquitin; the data's own limit is 1.25 Å


def test_low_res_support_holds_most_of_the_molecule(sample):
    geometry, data = sample
    truth = _on_grid(data["potential"], geometry)
    support = low_res_support(data["image_lr"], geometry, dilation_A=6.0)
    assert truth[support].sum() > 0.9 * truth.sum()
    assert support.sum() < 0.25 * support.size


def test_amplitudes_stay_centred_when_the_grid_cannot_hold_the_whole_pattern():
    """A coarse image pixel keeps fewer angles than were measured: the crop must not shift them."""
    geometry = Geometry(box_A=60.0, image_pixel_A=60 / 72, image_size_px=72, wavelength_A=0.02508,
                        defocus_lr_A=-1000.0, cutoff_lr_mrad=5.0, max_angle_mrad=20.0)
    rng = np.random.default_rng(0)
    obj = np.zeros((97, 97))
    obj[40:57, 40:57] = rng.uniform(0, 1, (17, 17))
    pattern = np.abs(np.fft.fftshift(np.fft.fft2(obj))) ** 2  # 97 px, direct beam at 48
    amplitude, known, _ = measured_amplitudes(pattern, geometry)
    expected = np.sqrt(pattern)[48 - 35 : 48 + 36, 48 - 35 : 48 + 36]  # the central 71 px
    shifted = np.fft.fftshift(amplitude)[1:, 1:] / 72**2
    np.testing.assert_allclose(shifted, expected * (shifted.max() / expected.max()), rtol=1e-6)


def test_geometry_matches_up_to_rounding_but_not_another_calibration():
    from dataclasses import replace
    geometry = Geometry(140.0, 0.546875, 128, 0.025079340450548007, -1000.0, 5.0, 20.0)
    # the same wavelength from a formula and from abTEM: equal in every digit an image can show
    assert geometry.matches(replace(geometry, wavelength_A=0.025079340317328468))
    assert not geometry.matches(replace(geometry, wavelength_A=0.0197))  # 300 kV instead of 200 kV
    assert not geometry.matches(replace(geometry, image_pixel_A=0.55))
