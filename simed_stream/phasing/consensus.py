"""From a particle's kept solutions to one image and a resolution estimate, without ground truth.

Solutions agree only up to the ambiguities of amplitudes — translation and point inversion
(the twin) — so each is first brought onto the best one (`align_to_best`, batched in torch:
the hand by the higher cross-correlation peak, the shift by that peak refined with a parabola).
Their agreement per Fourier ring is the phase-retrieval transfer function (PRTF, Chapman et
al. 2006): the length of the mean unit phasor, bias-corrected for the number of solutions, its
1/e crossing the resolution estimate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PRTF_THRESHOLD = 1.0 / math.e


def align_to_best(kept: torch.Tensor) -> torch.Tensor:
    """(P, K, n, n): each kept solution moved onto the first (the best), hand and sub-pixel shift."""
    if kept.shape[1] == 1:
        return kept
    n = kept.shape[-1]
    spectra = torch.fft.rfft2(kept)
    reference = spectra[:, :1]
    aligned = [kept[:, :1]]
    for j in range(1, kept.shape[1]):
        candidate = spectra[:, j : j + 1]
        direct = torch.fft.irfft2(reference * candidate.conj(), s=(n, n))
        twin = torch.fft.irfft2(reference * candidate, s=(n, n))  # v(−r) has the spectrum conj(V)
        use_twin = (twin.amax(dim=(-2, -1)) > direct.amax(dim=(-2, -1)))[..., None, None]
        spectrum = torch.where(use_twin, candidate.conj(), candidate)
        shift = subpixel_peak(torch.where(use_twin, twin, direct))
        aligned.append(torch.fft.irfft2(spectrum * shift_factor(shift, n), s=(n, n)))
    return torch.cat(aligned, dim=1)


def subpixel_peak(correlation: torch.Tensor) -> torch.Tensor:
    """(…, 2) position of each map's maximum, refined by a parabola per axis, in (−n/2, n/2]."""
    n = correlation.shape[-1]
    flat = correlation.flatten(-2)
    peak = flat.argmax(dim=-1)
    iy, ix = peak // n, peak % n
    out = []
    for axis, index in ((0, iy), (1, ix)):
        def at(offset):
            yy = (iy + offset) % n if axis == 0 else iy
            xx = (ix + offset) % n if axis == 1 else ix
            return torch.take_along_dim(flat, (yy * n + xx)[..., None], -1)[..., 0]

        before, centre, after = at(-1), at(0), at(1)
        curvature = before - 2 * centre + after
        offset = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp_max(-1e-30), torch.zeros_like(centre))
        out.append((index.to(correlation.dtype) + offset + n / 2) % n - n / 2)
    return torch.stack(out, dim=-1)


def shift_factor(shift_px: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier factor (rfft2 layout) that moves an object by +shift (…, 2) pixels."""
    ky = torch.fft.fftfreq(n, device=shift_px.device)[:, None]
    kx = torch.fft.rfftfreq(n, device=shift_px.device)[None, :]
    angle = -2 * math.pi * (ky * shift_px[..., 0, None, None] + kx * shift_px[..., 1, None, None])
    return torch.polar(torch.ones_like(angle), angle)


def phasor_coherence(aligned: torch.Tensor) -> np.ndarray:
    """(P, n, m) length of the mean unit phasor over the K aligned solutions, bias-corrected:
    K random phasors give |mean|² = 1/K on average, so ρ² = (K|mean|² − 1)/(K − 1)."""
    spectra = torch.fft.rfft2(aligned)
    coherence = (spectra / spectra.abs().clamp_min(1e-12)).mean(dim=1).abs()
    k = aligned.shape[1]
    if k > 1:
        coherence = ((k * coherence**2 - 1) / (k - 1)).clamp_min(0).sqrt()
    return coherence.cpu().numpy().astype(np.float64)


def ring_average(values: np.ndarray, weights: np.ndarray, rings: np.ndarray, n_rings: int) -> np.ndarray:
    """Weighted mean of `values` per ring (NaN where a ring has no weight)."""
    total = np.bincount(rings.ravel(), weights.ravel(), n_rings)
    return np.bincount(rings.ravel(), (weights * values).ravel(), n_rings) / np.where(total > 0, total, np.nan)


def crossing_A(curve: np.ndarray, frequency_inv_A: np.ndarray, threshold: float = PRTF_THRESHOLD) -> float:
    """Resolution (Å) where `curve` first falls below `threshold`, from ring 2 on, interpolated;
    the last finite ring's resolution if it never does."""
    finite = np.flatnonzero(np.isfinite(curve))
    if len(finite) < 3:
        return float("nan")
    for ring in finite[finite >= 2]:
        if curve[ring] < threshold:
            previous = ring - 1
            above, below = curve[previous] - threshold, curve[ring] - threshold
            fraction = min(1.0, max(0.0, above / (above - below))) if above != below else 0.0
            return float(1.0 / (frequency_inv_A[previous] + fraction * (frequency_inv_A[ring] - frequency_inv_A[previous])))
    return float(1.0 / frequency_inv_A[finite[-1]])
