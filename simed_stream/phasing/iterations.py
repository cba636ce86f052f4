"""The engine's tensor arithmetic: projections, HIO/ER steps, R-factors, grid changes.

Every function works on a batch (particles, starts, …) in float32 on the engine's device. `t`
is a level's constraint tensors (`ConstraintTensors.level`): amplitudes and masks in rfft2 layout
with a start axis of 1 that broadcasts over the population.
"""

from __future__ import annotations

import math

import torch


def project_fourier(v: torch.Tensor, t: dict, lowres_weight: float = 0.0) -> torch.Tensor:
    """Magnitudes onto the measured ones where imposed, zero beyond the data, the rest kept.

    One real factor per coefficient, A/|g| where imposed, 1 or 0 elsewhere (g·A/|g| is the same
    projection as A·exp(i·angle g) at half the cost), applied on the real view of the spectrum:
    complex-by-real products in torch would promote and copy. `lowres_weight` pulls the phases
    inside the low-res band towards the low-res image's (a soft constraint)."""
    spectrum = torch.fft.rfft2(v)
    parts = torch.view_as_real(spectrum)
    # A·(|g|²)^(-1/2) from the real and imaginary parts: torch's complex abs is ~5× slower
    inverse_magnitude = power(parts).clamp_min_(1e-24).rsqrt_()
    parts.mul_(torch.addcmul(t["passed"], t["imposed_amplitude"], inverse_magnitude).unsqueeze(-1))
    if lowres_weight > 0:
        pulled = (1 - lowres_weight) * spectrum + lowres_weight * t["lowres_target"]
        spectrum = torch.where(t["lowres_imposed"], pulled, spectrum)
    return torch.fft.irfft2(spectrum, s=v.shape[-2:])


def power(parts: torch.Tensor) -> torch.Tensor:
    """|g|² of a spectrum given as its real view (…, 2)."""
    return torch.addcmul(parts[..., 0] * parts[..., 0], parts[..., 1], parts[..., 1])


def hio_step(v: torch.Tensor, support: torch.Tensor, t: dict, beta: float, lowres_weight: float = 0.0) -> torch.Tensor:
    """One hybrid input-output iteration with positivity: inside the support where the projection
    is positive take it, elsewhere push away from it (v − β·projection)."""
    projected = project_fourier(v, t, lowres_weight)
    good = (projected > 0).logical_and_(support)
    return torch.where(good, projected, v.sub_(projected, alpha=beta))


def er_step(v: torch.Tensor, support: torch.Tensor, t: dict) -> torch.Tensor:
    """One error-reduction iteration: the projection, kept where positive inside the support."""
    projected = project_fourier(v, t)
    return projected.mul_((projected > 0).logical_and_(support))


def shrinkwrap(v: torch.Tensor, t: dict, sigma_px: float, threshold: float) -> torch.Tensor:
    """The new support: the blurred positive object above `threshold` of its maximum, inside the outer support."""
    blurred = blur(v.clamp_min(0), sigma_px, t["k2"])
    return t["outer"] & (blurred > threshold * blurred.amax(dim=(-2, -1), keepdim=True))


def solution(v: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """What an HIO iterate claims: its positive part inside the support."""
    return torch.where(support & (v > 0), v, torch.zeros((), device=v.device))


def r_factors(estimate: torch.Tensor, t: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(free R, working R) per (particle, start): Σ| |F| − A | / Σ A over the held-out and the
    imposed pixels. NaN for the free R when nothing was held out."""
    residual = (power(torch.view_as_real(torch.fft.rfft2(estimate))).sqrt_() - t["amplitude"]).abs()

    def r(mask):
        num = torch.where(mask, residual, 0).sum(dim=(-2, -1))
        return num / torch.where(mask, t["amplitude"], 0).sum(dim=(-2, -1)).clamp_min(1e-12)

    free = r(t["free"]) if bool(t["free"].any()) else torch.full(residual.shape[:2], float("nan"), device=estimate.device)
    return free, r(t["imposed"])


def blur(v: torch.Tensor, sigma_px: float, k2_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (σ in pixels of v's grid) by its Fourier transfer function."""
    n = v.shape[-1]
    return torch.fft.irfft2(torch.fft.rfft2(v) * torch.exp(-2 * math.pi**2 * sigma_px**2 * k2_px / n**2), s=v.shape[-2:])


def spectrum_rows(n: int, grid_px: int) -> torch.Tensor:
    """Rows of an n-point rfft2 layout that a grid_px-point layout holds (fftfreq order)."""
    half = grid_px // 2
    return torch.cat([torch.arange(0, half), torch.arange(n - half, n)])


def crop_spectrum(x: torch.Tensor, grid_px: int) -> torch.Tensor:
    rows = spectrum_rows(x.shape[-2], grid_px).to(x.device)
    return x.index_select(-2, rows)[..., : grid_px // 2 + 1]


def resample_real(v: torch.Tensor, grid_px: int) -> torch.Tensor:
    """A real image on a grid of grid_px points over the same box, by cropping or zero-padding
    its spectrum (values kept: the unnormalised DFT scales with the number of points)."""
    n = v.shape[-1]
    spectrum = torch.fft.rfft2(v)
    if grid_px < n:
        out = crop_spectrum(spectrum, grid_px)
    else:
        out = torch.zeros(v.shape[:-2] + (grid_px, grid_px // 2 + 1), dtype=spectrum.dtype, device=v.device)
        out[..., spectrum_rows(grid_px, n).to(v.device), : n // 2 + 1] = spectrum
    return torch.fft.irfft2(out * (grid_px / n) ** 2, s=(grid_px, grid_px))


def resample_mask(mask: torch.Tensor, grid_px: int) -> torch.Tensor:
    """A support on another grid: a coarse pixel is inside if any fine pixel it covers is."""
    n = mask.shape[-1]
    if grid_px == n:
        return mask
    flat = mask.reshape(-1, 1, n, n).float()
    if grid_px < n:
        out = torch.nn.functional.max_pool2d(flat, n // grid_px)
    else:
        out = torch.nn.functional.interpolate(flat, size=(grid_px, grid_px), mode="nearest")
    return out.reshape(mask.shape[:-2] + (grid_px, grid_px)) > 0
