"""Physics checks on abTEM output: symmetry, band limits, SNR, weak-phase consistency, defocus."""

import h5py
import numpy as np
import pytest

from simulator.physics import configure_abtem, ctf_intensity, exit_wave, poisson_counts

from conftest import radial_frequency, small_config


@pytest.fixture(scope="module", autouse=True)
def _abtem():
    configure_abtem()


def _diffraction(numbers, positions, height_A, config):
    _, wave = exit_wave(np.asarray(numbers), np.asarray(positions, float), height_A, config)
    return np.asarray(wave.diffraction_patterns(max_angle=config.max_angle_mrad).array, float)


def test_weak_phase_object_diffraction_is_centrosymmetric():
    """Friedel symmetry holds to first order in the phase: asymmetry shrinks with the phase shift."""
    config = small_config()
    positions = np.random.default_rng(0).uniform(-6, 6, size=(12, 3)) * [1, 1, 0]  # one plane, one slice
    asymmetry = {}
    for element, tolerance in ((1, 0.005), (6, 0.02)):  # peak phase ≈ 0.02 rad (H), 0.10 rad (C)
        pattern = _diffraction([element] * 12, positions, 3.0, config)
        centre = pattern.shape[0] // 2
        assert np.unravel_index(pattern.argmax(), pattern.shape) == (centre, centre)
        yy, xx = np.indices(pattern.shape) - centre
        away = np.hypot(yy, xx) > 2
        asymmetry[element] = np.abs(pattern - pattern[::-1, ::-1])[away].sum() / pattern[away].sum()
        assert asymmetry[element] < tolerance
    assert asymmetry[1] < asymmetry[6]


def test_too_coarse_grid_silently_cuts_the_pattern_and_config_refuses_it():
    from simed_stream.errors import ConfigError

    fine = small_config(box_A=50.0, gpts=144)  # keeps 22.9 mrad
    positions = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 1.4, 0.0]])
    pattern_fine = _diffraction([79, 79, 79], positions, 4.0, fine)
    coarse = fine.model_copy(update={"gpts": 96})  # bypasses validation: what abTEM alone would do
    pattern_coarse = _diffraction([79, 79, 79], positions, 4.0, coarse)
    assert pattern_coarse.shape == pattern_fine.shape  # same calibration, nothing looks wrong...
    angles = np.hypot(*(np.indices(pattern_fine.shape) - pattern_fine.shape[0] // 2)) * fine.diffraction_mrad_per_px
    outer = (angles > 16) & (angles < 20)
    assert pattern_fine[outer].sum() > 1e-5
    assert pattern_coarse[outer].sum() < 1e-6 * pattern_fine[outer].sum()  # ...but 16–20 mrad is gone
    with pytest.raises(ConfigError, match="gpts >= 120"):
        small_config(gpts=96)


def test_defocus_is_taken_at_the_molecule_centre_with_abtem_sign():
    config = small_config()
    atom = np.zeros((1, 3))
    images = {}
    for height in (11.0, 61.0):  # the same atom, 5.5 Å or 30.5 Å above the exit plane
        _, wave = exit_wave(np.array([79]), atom, height, config)
        images[height] = ctf_intensity(wave, config, -50.0, height, 0.0, None)
        # what passing the defocus straight to abTEM (taken at the exit plane) would give:
        images[height, "naive"] = ctf_intensity(wave, config, -50.0 - height / 2, height, 0.0, None)
    contrast = np.abs(images[61.0] - 1).max()
    assert np.abs(images[11.0] - images[61.0]).max() < 0.02 * contrast
    assert np.abs(images[11.0, "naive"] - images[61.0, "naive"]).max() > 0.2 * contrast
    # abTEM's sign: positive defocus is underfocus, which shows an atom dark at small defocus
    centre = config.gpts // 2
    _, wave = exit_wave(np.array([79]), atom, 11.0, config)
    under = ctf_intensity(wave, config, 300.0, 11.0, 0.0, 5.0)
    over = ctf_intensity(wave, config, -300.0, 11.0, 0.0, 5.0)
    assert under[centre, centre] < under.mean() < over[centre, centre]


def test_low_res_image_has_no_power_beyond_the_cutoff(physics_dataset):
    with h5py.File(physics_dataset) as f:
        cutoff_inv_A = f.attrs["cutoff_lr_mrad"] * 1e-3 / f.attrs["wavelength_A"]
        pixel = f.attrs["image_pixel_A"]
        clean, high = f["image_lr_clean"][:].astype(float), f["image_hr"][:].astype(float)
    k = radial_frequency(clean.shape[1:], pixel)
    beyond, nonzero = k > cutoff_inv_A, k > 0
    for image_lr, image_hr in zip(clean, high):
        power = np.abs(np.fft.fft2(image_lr)) ** 2
        assert power[beyond].sum() < 1e-8 * power[nonzero].sum()
        power_hr = np.abs(np.fft.fft2(image_hr)) ** 2
        assert power_hr[beyond].sum() > 0.1 * power_hr[nonzero].sum()  # the check can fail


def test_low_res_snr_in_the_8_to_5_A_band(physics_dataset):
    with h5py.File(physics_dataset) as f:
        pixel = f.attrs["image_pixel_A"]
        noisy, clean = f["image_lr"][:].astype(float), f["image_lr_clean"][:].astype(float)
        stored_snr, dose = f["snr_measured"][:], f["dose_e_per_A2"][:]
    k = radial_frequency(clean.shape[1:], pixel)
    band = (k >= 1 / 8) & (k <= 1 / 5)
    ours = []
    for image, truth in zip(noisy, clean):
        signal = (np.abs(np.fft.fft2(truth))[band] ** 2).sum()
        noise = (np.abs(np.fft.fft2(image - truth))[band] ** 2).sum()
        ours.append(signal / noise)
    np.testing.assert_allclose(ours, stored_snr, rtol=1e-3)
    assert np.mean(ours) == pytest.approx(0.8, rel=0.15)
    assert np.all(np.abs(np.array(ours) / 0.8 - 1) < 0.3)  # single samples scatter: ~190 coefficients
    assert np.all((dose > 100) & (dose < 2000))  # ubiquitin needs a few hundred e/Å²
    # counts were drawn per pixel: image × electrons per pixel is an integer
    electrons_per_pixel = dose[0] * pixel**2
    counts = noisy[0] * electrons_per_pixel
    np.testing.assert_allclose(counts, np.round(counts), atol=2e-3 * electrons_per_pixel)


def test_diffraction_amplitude_matches_the_projected_potential_spectrum(physics_dataset):
    """Weak-phase approximation: away from the direct beam √I(k) ∝ |FFT(projected potential)|."""
    with h5py.File(physics_dataset) as f:
        box, pixel = f.attrs["box_A"], f.attrs["image_pixel_A"]
        patterns, potentials = f["diffraction"][:].astype(float), f["potential"][:].astype(float)
    n = int(round(box / pixel))  # pad the 70 Å potential to the full box: same reciprocal grid as the pattern
    side = patterns.shape[1]
    yy, xx = np.indices((side, side)) - side // 2
    ring = (np.hypot(yy, xx) > 3) & (np.hypot(yy, xx) <= side // 2)
    for pattern, potential in zip(patterns, potentials):
        padded = np.zeros((n, n))
        offset = (n - potential.shape[0]) // 2
        padded[offset : offset + potential.shape[0], offset : offset + potential.shape[0]] = potential
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(padded)))
        spectrum = spectrum[n // 2 - side // 2 : n // 2 + side // 2 + 1, n // 2 - side // 2 : n // 2 + side // 2 + 1]
        assert np.corrcoef(np.sqrt(pattern[ring]), spectrum[ring])[0, 1] > 0.9
        assert abs(pattern.sum() - 1) < 1e-3  # normalised to the incident beam


def test_poisson_counts_invert_the_cdf_of_one_uniform_per_pixel():
    from scipy.stats import poisson

    rng = np.random.default_rng(0)
    mean = np.concatenate([rng.uniform(0, 0.05, 4000), rng.uniform(0, 3, 4000), rng.uniform(3, 300, 4000),
                           rng.uniform(1e3, 1e6, 400), [0.0, 1e-300, 1e-9]])  # small means: the guess is too high
    counts = poisson_counts(mean, np.random.default_rng(1))
    uniforms = np.random.default_rng(1).random(mean.size)
    np.testing.assert_array_equal(counts, np.maximum(poisson.ppf(uniforms, mean), 0))


@pytest.mark.parametrize("mean", [0.05, 2.5, 37.0, 400.0, 2e5])
def test_poisson_counts_have_poisson_mean_and_variance(mean):
    n = 200_000
    counts = poisson_counts(np.full(n, mean), np.random.default_rng(int(mean * 100)))
    assert abs(counts.mean() - mean) < 5 * np.sqrt(mean / n)
    assert abs(counts.var() - mean) < 5 * np.sqrt((mean + 2 * mean**2) / n)  # standard error of a variance


def test_poisson_counts_do_not_shift_with_the_rounding_of_the_means():
    """A 1e-6 change of every mean (what other FFT rounding gives) changes a count, by one, in a
    fraction ~1e-6·mean of the pixels; numpy's rejection sampler, which this replaces, shifted its
    stream so that runs of following pixels changed by up to half the range."""
    mean = np.random.default_rng(2).uniform(50, 200, (512, 512))
    counts = poisson_counts(mean, np.random.default_rng(3))
    perturbed = poisson_counts(mean * (1 + 1e-6), np.random.default_rng(3))
    changed = counts != perturbed
    assert changed.sum() <= 100  # expected ~33 (sum of the mean changes)
    assert np.abs(counts - perturbed).max() <= 1


@pytest.mark.parametrize("energy_eV", [60e3, 80e3, 120e3, 200e3, 300e3])
def test_wavelength_is_abtems_to_the_last_bit(energy_eV):
    from abtem.core.energy import energy2wavelength

    from simed_stream.optics import electron_wavelength_A

    assert electron_wavelength_A(energy_eV) == energy2wavelength(energy_eV)
