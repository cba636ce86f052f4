"""Classical phase retrieval: HIO with shrink-wrap, then error reduction, started and supported
from the low-resolution image.

The exit wave of a weak phase object is ψ ≈ 1 + iσV, so away from the direct beam the
diffraction amplitude is |FFT(σV)|: we retrieve the real, non-negative v = σV from the
Friedel-symmetrised amplitudes. The object grid is the diffraction's box (pixel 1/box in
reciprocal space) sampled at the image pixel, so the central field is directly the image grid.
The low-res image gives the support (where the molecule is), starting phases (a Wiener
deconvolution of its CTF) and, at the end, origin and twin: amplitudes cannot tell an object
from its translated or point-inverted copy, and HIO often converges to one of those; the
result is aligned to the low-res estimate by cross-correlation in the band it carries. Without
that step FRCs against the truth looked like failures (15–40 Å) on solutions that were right
(1.4–1.5 Å after alignment).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np
from scipy import fft, ndimage

from simed_stream.arrays import crop_center, embed_center
from simed_stream.metrics import spatial_frequencies


@dataclass(frozen=True)
class Geometry:
    """Calibration shared by the diffraction and the images (from a dataset's attributes)."""

    box_A: float  # the diffraction's box: reciprocal pixel = 1 / box_A
    image_pixel_A: float
    image_size_px: int
    wavelength_A: float
    defocus_lr_A: float  # abTEM convention, at the molecule centre
    cutoff_lr_mrad: float
    max_angle_mrad: float

    @property
    def grid_px(self) -> int:
        return int(round(self.box_A / self.image_pixel_A))

    def matches(self, other: "Geometry", rtol: float = 1e-6) -> bool:
        """Equal up to float rounding: the same calibration written by two code paths (a wavelength
        from a formula or from abTEM) differs in the last digits, which no image can show."""
        return all(np.isclose(a, b, rtol=rtol, atol=0.0) for a, b in zip(astuple(self), astuple(other)))

    @classmethod
    def from_attrs(cls, attrs) -> "Geometry":
        return cls(float(attrs["box_A"]), float(attrs["image_pixel_A"]), int(attrs["image_size_px"]),
                   float(attrs["wavelength_A"]), float(attrs["defocus_lr_A"]), float(attrs["cutoff_lr_mrad"]),
                   float(attrs["max_angle_mrad"]))


@dataclass(frozen=True)
class HIOSettings:
    hio_iterations: int = 1500  # a 140 Å box needs ~3× the iterations of a 70 Å one
    er_iterations: int = 200
    beta: float = 0.9
    shrinkwrap_every: int = 20
    shrinkwrap_sigma_px: tuple[float, float] = (3.0, 1.5)  # blur, from start to end
    shrinkwrap_threshold: float = 0.04  # of the blurred maximum
    support_dilation_A: float = 6.0


def measured_amplitudes(diffraction: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(amplitude, known, beyond) on the object grid's unshifted FFT layout: √(Friedel-symmetrised
    pattern) scaled to numpy's unnormalised DFT of σV, where it is measured (0 < k ≤ max) and
    where the data say nothing (k > max: kept at zero, a band-limited estimate)."""
    n = geometry.grid_px
    symmetric = 0.5 * (diffraction + diffraction[::-1, ::-1])
    side = symmetric.shape[0]
    if side > n:  # the image pixel cannot carry the outermost angles: keep what the grid holds
        symmetric = crop_center(symmetric, n - 1 if n % 2 == 0 else n)  # odd: the direct beam stays central
    amplitude = np.fft.ifftshift(embed_center(np.sqrt(np.maximum(symmetric, 0.0)) * n * n, n))
    k = spatial_frequencies((n, n), geometry.image_pixel_A)
    known = (k > 0) & (k <= geometry.max_angle_mrad * 1e-3 / geometry.wavelength_A)
    beyond = k > geometry.max_angle_mrad * 1e-3 / geometry.wavelength_A
    return amplitude, known, beyond


def low_res_start(image_lr: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Wiener estimate of σV from the defocused low-res image, on the object grid.

    Weak phase: I ≈ 1 + v ⊗ h with H(k) = −2 sin(πλΔf k²) inside the low-res cutoff (abTEM's
    defocus sign: positive = underfocus, where atoms look dark)."""
    n, size = geometry.grid_px, geometry.image_size_px
    k = spatial_frequencies((size, size), geometry.image_pixel_A)
    ctf = -2 * np.sin(np.pi * geometry.wavelength_A * geometry.defocus_lr_A * k**2)
    ctf[k > geometry.cutoff_lr_mrad * 1e-3 / geometry.wavelength_A] = 0.0
    contrast = image_lr - np.median(image_lr)
    estimate = np.fft.ifft2(np.fft.fft2(contrast) * ctf / (ctf**2 + 0.1)).real
    return embed_center(estimate, n)


def low_res_core(image_lr: np.ndarray, geometry: Geometry, threshold: float = 0.25) -> np.ndarray:
    """Where the low-res image shows the molecule (image grid): local power of its contrast
    above the background's by `threshold` of the way from the edge's median to the maximum."""
    pixel = geometry.image_pixel_A
    contrast = ndimage.gaussian_filter(image_lr - np.median(image_lr), 2.0 / pixel)
    power = ndimage.gaussian_filter(contrast**2, 5.0 / pixel)
    edge = np.concatenate([power[:8].ravel(), power[-8:].ravel(), power[:, :8].ravel(), power[:, -8:].ravel()])
    return power > np.median(edge) + threshold * (power.max() - np.median(edge))


def low_res_support(image_lr: np.ndarray, geometry: Geometry, dilation_A: float = 2.0, threshold: float = 0.25,
                    core: np.ndarray | None = None) -> np.ndarray:
    """The support on the object grid: the low-res core dilated by `dilation_A`, holes filled."""
    core = low_res_core(image_lr, geometry, threshold) if core is None else core
    support = ndimage.binary_dilation(core, iterations=max(1, int(round(dilation_A / geometry.image_pixel_A))))
    return embed_center(ndimage.binary_fill_holes(support), geometry.grid_px)


def phase(diffraction: np.ndarray, image_lr: np.ndarray, geometry: Geometry,
          settings: HIOSettings = HIOSettings(), support: np.ndarray | None = None) -> np.ndarray:
    """σV on the image grid (image_size_px², image_pixel_A) retrieved from one pattern.
    `support` (object grid) replaces the one estimated from the low-res image (for tests)."""
    amplitude, known, beyond = (a[:, : a.shape[1] // 2 + 1] for a in measured_amplitudes(diffraction, geometry))
    outer = low_res_support(image_lr, geometry, settings.support_dilation_A) if support is None else support
    wiener = low_res_start(image_lr, geometry)
    start = fft.rfft2(wiener)
    phases = np.exp(1j * np.angle(start))
    shape = outer.shape
    v = fft.irfft2(np.where(known, amplitude * phases, start), shape) * outer
    support = outer.copy()
    total = settings.hio_iterations + settings.er_iterations
    for iteration in range(total):
        g = fft.rfft2(v)  # v is real: half the spectrum is enough
        g = np.where(known, amplitude * np.exp(1j * np.angle(g)), g)
        g[beyond] = 0.0
        projected = fft.irfft2(g, shape)
        good = support & (projected >= 0)
        if iteration < settings.hio_iterations:
            v = np.where(good, projected, v - settings.beta * projected)
        else:
            v = np.where(good, projected, 0.0)
        if iteration < settings.hio_iterations and iteration % settings.shrinkwrap_every == settings.shrinkwrap_every - 1:
            fraction = iteration / max(settings.hio_iterations - 1, 1)
            sigma = settings.shrinkwrap_sigma_px[0] + fraction * (settings.shrinkwrap_sigma_px[1] - settings.shrinkwrap_sigma_px[0])
            blurred = ndimage.gaussian_filter(np.maximum(v, 0), sigma)
            support = outer & (blurred > settings.shrinkwrap_threshold * blurred.max())
    return crop_center(align_to(np.maximum(v, 0), wiener, geometry), geometry.image_size_px)


def align_to(v: np.ndarray, reference: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Undo the ambiguities the amplitudes cannot fix — translation and point inversion
    (the twin) — by cross-correlating with the low-res estimate in the band it carries."""
    return apply_origin_and_hand(v, *find_origin_and_hand(v, reference, geometry))


def find_origin_and_hand(v: np.ndarray, reference: np.ndarray, geometry: Geometry) -> tuple[bool, tuple[float, float]]:
    """(twin, shift): whether the point-inverted copy of `v` matches `reference` better in the
    band the low-res image carries, and the sub-pixel shift (1/20 px) that moves it there."""
    from skimage.registration import phase_cross_correlation

    n = v.shape[0]
    band = spatial_frequencies((n, n), geometry.image_pixel_A) <= geometry.cutoff_lr_mrad * 1e-3 / geometry.wavelength_A
    reference_spectrum = np.fft.fft2(reference) * band
    best = None
    for twin in (False, True):
        spectrum = np.fft.fft2(point_inverted(v) if twin else v) * band
        shift, error, _ = phase_cross_correlation(reference_spectrum, spectrum, space="fourier", upsample_factor=20,
                                                  normalization=None)
        if best is None or error < best[0]:
            best = (error, twin, shift)
    _, twin, shift = best
    return twin, (float(shift[0]), float(shift[1]))


def point_inverted(v: np.ndarray) -> np.ndarray:
    """v(−r) on the periodic grid (pixel 0 stays the origin)."""
    return np.roll(v[::-1, ::-1], 1, axis=(0, 1))


def apply_origin_and_hand(v: np.ndarray, twin: bool, shift: tuple[float, float]) -> np.ndarray:
    """`v` point-inverted if `twin`, then moved by `shift` pixels (a Fourier shift)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(point_inverted(v) if twin else v), shift)).real
