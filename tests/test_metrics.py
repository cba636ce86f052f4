"""Metrics against hand-computed references and signals of known resolution."""

import numpy as np
import pytest

from simed_stream.metrics import fourier_r_factor, frc, half_bit_threshold, ring_index, ssim


def _random_image(n=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n))


def _low_pass(image, cutoff_rings):
    rings = ring_index(image.shape)
    return np.fft.ifft2(np.fft.fft2(image) * (rings <= cutoff_rings)).real


def test_frc_of_an_image_with_itself_is_one_and_with_its_negative_minus_one():
    image = _random_image()
    np.testing.assert_allclose(frc(image, image, 1.0).frc, 1.0)
    np.testing.assert_allclose(frc(image, -image, 1.0).frc, -1.0)


def test_frc_matches_a_hand_computed_ring():
    a, b = _random_image(16, 1), _random_image(16, 2)
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    ky, kx = np.meshgrid(np.fft.fftfreq(16) * 16, np.fft.fftfreq(16) * 16, indexing="ij")
    ring3 = np.rint(np.sqrt(ky**2 + kx**2)) == 3
    expected = (fa[ring3] * fb[ring3].conj()).real.sum() / np.sqrt((abs(fa[ring3]) ** 2).sum() * (abs(fb[ring3]) ** 2).sum())
    assert frc(a, b, 1.0).frc[3] == pytest.approx(expected)
    assert frc(a, b, 1.0).ring_counts[1] == 8  # the ring-1 caveat: 8 coefficients


def test_resolution_of_a_band_limited_copy():
    """Same content to ring 20, independent noise beyond: FRC 1 then ~0, crossing at ring 20.5."""
    n, pixel = 128, 0.5
    truth = _random_image(n, 3)
    other = _low_pass(truth, 20) + (_random_image(n, 4) - _low_pass(_random_image(n, 4), 20))
    resolution = frc(other, truth, pixel).resolution_A(0.5)
    assert resolution == pytest.approx(n * pixel / 20.5, rel=0.03)
    assert frc(truth, truth, pixel).resolution_A(0.5) != frc(truth, truth, pixel).resolution_A(0.5)  # NaN: no crossing


def test_frc_of_signal_plus_noise_follows_the_snr():
    """FRC = SNR / (1 + SNR) for a reference and a noisy copy of equal-power signal and noise."""
    truth = _random_image(256, 5)
    noisy = truth + _random_image(256, 6)  # SNR 1 at every ring → FRC = 1/√2 against the truth
    curve = frc(noisy, truth, 1.0).frc[5:100]
    assert curve.mean() == pytest.approx(1 / np.sqrt(2), abs=0.02)


def test_half_bit_threshold_values():
    assert half_bit_threshold(np.array([1e12]))[0] == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    assert half_bit_threshold(np.array([8]))[0] == pytest.approx((0.2071 + 1.9102 / np.sqrt(8)) / (1.2071 + 0.9102 / np.sqrt(8)))


def test_fourier_r_factor_is_zero_for_consistent_data_and_grows_with_error():
    rng = np.random.default_rng(7)
    k = rng.uniform(0, 1, 1000)
    measured = rng.uniform(1, 2, 1000)
    shells = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(fourier_r_factor(3 * measured, measured, k, shells), 0, atol=1e-12)  # scale-free
    wrong = measured * rng.uniform(0.5, 1.5, 1000)
    r = fourier_r_factor(wrong, measured, k, shells)
    assert np.all((r > 0.1) & (r < 0.4))


def test_ssim_rewards_the_right_image_whatever_its_scale():
    truth = _low_pass(_random_image(64, 8), 10)
    assert ssim(5 * truth + 3, truth) == pytest.approx(1.0, abs=1e-6)
    assert ssim(_low_pass(_random_image(64, 9), 10), truth) < 0.3
