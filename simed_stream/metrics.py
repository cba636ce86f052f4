"""Image quality against a reference, and consistency with measured diffraction.

- FRC (Fourier ring correlation) with RELION's ring convention, r = round(|k|) in Fourier
  pixels; the resolution where it first falls below a threshold, searched from ring 2 (ring 1
  holds 8 coefficients and, for defocused images, little contrast), with linear interpolation.
- Fourier R-factor of an image's amplitude against measured diffraction amplitudes, per shell:
  the check that needs no ground truth.
- SSIM (scikit-image) after fitting gain and offset to the reference, with an explicit data range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def spatial_frequencies(shape: tuple[int, int], pixel_A: float) -> np.ndarray:
    """|k| in 1/Å for each coefficient of an unshifted 2-D DFT."""
    ky = np.fft.fftfreq(shape[0], d=pixel_A)
    kx = np.fft.fftfreq(shape[1], d=pixel_A)
    return np.hypot(ky[:, None], kx[None, :])


def ring_index(shape: tuple[int, int]) -> np.ndarray:
    """round(|k|) in Fourier pixels for each coefficient of an unshifted 2-D FFT of a square image."""
    n = shape[0]
    if shape[0] != shape[1]:
        raise ValueError(f"FRC needs a square image, got {shape}")
    k = np.fft.fftfreq(n) * n
    return np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64)


@dataclass(frozen=True)
class FRCCurve:
    frc: np.ndarray  # (n // 2 + 1,) ring 0 .. Nyquist
    ring_counts: np.ndarray  # coefficients per ring
    pixel_A: float
    size: int

    @property
    def frequency_inv_A(self) -> np.ndarray:
        return np.arange(len(self.frc)) / (self.size * self.pixel_A)

    def resolution_A(self, threshold: float | str = 0.5) -> float:
        """Resolution (Å) where the FRC first falls below `threshold` (a number or 'half-bit'),
        from ring 2 on, linearly interpolated; NaN if it never does (better than Nyquist)."""
        thresholds = half_bit_threshold(self.ring_counts) if threshold == "half-bit" else np.full(len(self.frc), float(threshold))
        for ring in range(2, len(self.frc)):
            if self.frc[ring] < thresholds[ring]:
                above, below = self.frc[ring - 1] - thresholds[ring - 1], self.frc[ring] - thresholds[ring]
                # clipped: a curve already below at ring 1 reports ring 1-2, never beyond the box
                fraction = min(1.0, max(0.0, above / (above - below))) if above != below else 0.0
                k = (ring - 1 + fraction) / (self.size * self.pixel_A)
                return float(1.0 / k)
        return float("nan")


def frc(image: np.ndarray, reference: np.ndarray, pixel_A: float) -> FRCCurve:
    """FRC(r) = Σ Re(F₁F₂*) / √(Σ|F₁|² Σ|F₂|²) over ring r."""
    if image.shape != reference.shape:
        raise ValueError(f"images differ in shape: {image.shape} vs {reference.shape}")
    rings = ring_index(image.shape)
    f1 = np.fft.fft2(np.asarray(image, np.float64))
    f2 = np.fft.fft2(np.asarray(reference, np.float64))
    n_rings = image.shape[0] // 2 + 1
    inside = rings < n_rings
    r = rings[inside]
    cross = np.bincount(r, (f1 * np.conj(f2)).real[inside], n_rings)
    power1 = np.bincount(r, (np.abs(f1) ** 2)[inside], n_rings)
    power2 = np.bincount(r, (np.abs(f2) ** 2)[inside], n_rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(power1 * power2 > 0, cross / np.sqrt(power1 * power2), 0.0)
    return FRCCurve(curve, np.bincount(r, minlength=n_rings), float(pixel_A), image.shape[0])


def half_bit_threshold(ring_counts: np.ndarray) -> np.ndarray:
    """van Heel & Schatz (2005) half-bit criterion for rings of n coefficients."""
    root = np.sqrt(np.maximum(ring_counts, 1))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def fourier_r_factor(image_amplitude: np.ndarray, measured_amplitude: np.ndarray, frequency_inv_A: np.ndarray,
                     shells_inv_A: np.ndarray, exclude_below_inv_A: float = 0.0) -> np.ndarray:
    """R = Σ| |F| − s·|M| | / Σ s·|M| per shell, s the least-squares scale over all shells used.

    `image_amplitude` and `measured_amplitude` are on the same reciprocal grid (e.g. |FFT| of
    an image padded to the diffraction's box, and √(diffraction)); the direct beam and anything
    below `exclude_below_inv_A` are left out. Returns one value per shell (NaN if empty)."""
    used = (frequency_inv_A > exclude_below_inv_A) & (frequency_inv_A <= shells_inv_A[-1])
    a, m = image_amplitude[used], measured_amplitude[used]
    scale = float((a * m).sum() / max((m * m).sum(), 1e-30))
    k = frequency_inv_A[used]
    out = np.full(len(shells_inv_A) - 1, np.nan)
    for i, (low, high) in enumerate(zip(shells_inv_A[:-1], shells_inv_A[1:])):
        shell = (k > low) & (k <= high)
        if shell.any():
            out[i] = np.abs(a[shell] - scale * m[shell]).sum() / max(scale * m[shell].sum(), 1e-30)
    return out


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """SSIM (Wang et al. settings) after a least-squares gain and offset fit to the reference."""
    from skimage.metrics import structural_similarity

    x = np.asarray(image, np.float64).ravel()
    design = np.column_stack([x, np.ones_like(x)])
    gain, offset = np.linalg.lstsq(design, np.asarray(reference, np.float64).ravel(), rcond=None)[0]
    fitted = (gain * np.asarray(image, np.float64) + offset)
    reference = np.asarray(reference, np.float64)
    return float(structural_similarity(fitted, reference, data_range=float(reference.max() - reference.min()),
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
