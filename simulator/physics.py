"""One orientation of one molecule through abTEM: diffraction, images and projected potential.

Physics (abTEM 1.0 API): independent-atom potential (`projection="infinite"`) with the
configured parametrisation (Lobato by default), a plane wave, multislice to the exit wave.

- `diffraction`: |FFT(exit wave)|² cropped to ±max_angle, on its native reciprocal grid
  (pixel = λ / box), direct beam in the centre pixel, normalised to the incident electrons.
- `image_hr`: exit wave through a CTF of the high-res defocus, intensity.
- `image_lr_clean`: exit wave through a CTF of the low-res defocus and a soft objective
  aperture; the intensity is then band-limited by a cosine envelope reaching zero at the same
  cutoff, because the intensity of an apertured wave still holds frequencies up to twice the
  aperture (its quadratic terms) and the low-res image must carry nothing beyond the cutoff.
- `image_lr`: `image_lr_clean` with Poisson noise at the dose that gives the target spectral SNR
  in the SNR band, divided by the electrons per pixel (so it stays in units of the clean image).
  Counts are drawn by `poisson_counts`, one uniform per pixel, so that float rounding of the
  means cannot shift the random stream (see there).
- `potential`: projected potential (abTEM units, V·Å), no CTF.

Defocus: abTEM's convention, `defocus = -C10`, positive = underfocus; abTEM applies it at its
reference plane, the exit plane at the bottom of the box. Our defocus values are meant at the
molecule's centre, which sits `cell_height/2` above the exit plane, so abTEM receives
`defocus + cell_height/2` (propagating the exit wave back to the centre, then defocusing).

Images are the central `image_field_A` of the box, Fourier-resampled to `image_size_px`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simed_stream.errors import StructureError
from simed_stream.metrics import spatial_frequencies
from simulator.config import SimulationConfig
from simulator.orientations import rotate
from simulator.structure import PreparedStructure

IMAGE_KINDS = ("image_hr", "image_lr", "image_lr_clean", "potential")


def configure_abtem() -> None:
    """Eager NumPy results, no progress bars, one FFTW thread per process (one process per core)."""
    import abtem

    abtem.config.set({"dask.lazy": False, "diagnostics.progress_bar": False, "fftw.threads": 1, "device": "cpu"})


def cell_height_A(structure: PreparedStructure, config: SimulationConfig) -> float:
    """Box height: the molecule's extent in any orientation plus the margin on both faces."""
    return 2.0 * (structure.radius_A + config.margin_A)


def check_fits(structure: PreparedStructure, config: SimulationConfig) -> None:
    """Refuse a molecule that would wrap around the periodic box or overflow the image field."""
    diameter = 2.0 * structure.radius_A
    if diameter + 2.0 * config.margin_A > config.box_A:
        raise StructureError(
            f"{structure.name} ({structure.mass_kDa:.1f} kDa, {diameter:.1f} Å across in its longest direction) "
            f"does not fit the {config.box_A:g} Å box with {config.margin_A:g} Å margins in every orientation; "
            "abTEM would wrap its atoms periodically. Use a larger box_A (and gpts) or a smaller protein."
        )
    if diameter > config.image_field_A:
        raise StructureError(
            f"{structure.name} ({diameter:.1f} Å across) does not fit the {config.image_field_A:g} Å image field "
            "in every orientation; its images would be cut. Increase image_field_A."
        )


@dataclass
class OrientationResult:
    diffraction: np.ndarray
    image_hr: np.ndarray
    image_lr: np.ndarray
    image_lr_clean: np.ndarray
    potential: np.ndarray
    dose_e_per_A2: float
    snr_measured: float


def exit_wave(atomic_numbers: np.ndarray, positions_A: np.ndarray, height_A: float, config: SimulationConfig):
    """abTEM potential and exit wave of atoms (centred on the origin) placed in the box centre."""
    import abtem
    from ase import Atoms

    centre = np.array([config.box_A / 2, config.box_A / 2, height_A / 2])
    atoms = Atoms(numbers=atomic_numbers, positions=positions_A + centre, cell=[config.box_A, config.box_A, height_A])
    potential = abtem.Potential(
        atoms, gpts=config.gpts, slice_thickness=config.slice_thickness_A,
        parametrization=config.parametrization, projection="infinite",
    )
    # Built once and kept (~30 MB): the multislice and the projection then share the slices
    # instead of abTEM integrating every slice twice (35 % of the time per orientation).
    potential = potential.build(lazy=False)
    wave = abtem.PlaneWave(energy=config.energy_eV).multislice(potential, lazy=False)
    return potential, wave


def ctf_intensity(wave, config: SimulationConfig, defocus_A: float, height_A: float, Cs_A: float,
                  semiangle_cutoff_mrad: float | None) -> np.ndarray:
    """Intensity of the exit wave through a CTF whose defocus is taken at the molecule centre."""
    import abtem

    ctf = abtem.CTF(
        energy=config.energy_eV, defocus=defocus_A + height_A / 2, Cs=Cs_A,
        semiangle_cutoff=np.inf if semiangle_cutoff_mrad is None else semiangle_cutoff_mrad, soft=True,
    )
    return np.asarray(wave.apply_ctf(ctf).intensity().array, dtype=np.float64)


def simulate_orientation(structure: PreparedStructure, quaternion: np.ndarray, config: SimulationConfig,
                         defocus_lr_A: float, rng: np.random.Generator) -> OrientationResult:
    height = cell_height_A(structure, config)
    potential, wave = exit_wave(structure.atomic_numbers, rotate(structure.positions_A, quaternion), height, config)
    diffraction = np.asarray(
        wave.diffraction_patterns(max_angle=config.max_angle_mrad, block_direct=False).array, dtype=np.float64
    )
    diffraction_rng, image_rng = rng.spawn(2)  # each noise has its own stream of the sample's seed
    if config.diffraction_dose_e_per_A2 is not None:
        electrons = config.diffraction_dose_e_per_A2 * config.box_A**2
        diffraction = poisson_counts(diffraction * electrons, diffraction_rng) / electrons

    hr = ctf_intensity(wave, config, config.image_hr.defocus_A, height, config.image_hr.Cs_A,
                       config.image_hr.semiangle_cutoff_mrad)
    lr_params = config.image_lr
    lr = ctf_intensity(wave, config, defocus_lr_A, height, lr_params.Cs_A, lr_params.cutoff_mrad)
    projected = np.asarray(potential.project().array, dtype=np.float64)

    hr, lr, projected = (to_image_grid(image, config) for image in (hr, lr, projected))
    wavelength = config.wavelength_A
    lr_clean = apply_envelope(
        lr, config.image_pixel_A, lr_params.cutoff_mrad * 1e-3 / wavelength, lr_params.soft_edge_mrad * 1e-3 / wavelength
    )
    dose = dose_for_snr(lr_clean, config.image_pixel_A, lr_params.snr_band_A, lr_params.target_snr)
    electrons_per_pixel = dose * config.image_pixel_A**2
    counts = poisson_counts(np.clip(lr_clean, 0.0, None) * electrons_per_pixel, image_rng)
    snr = spectral_snr(lr_clean * electrons_per_pixel, counts, config.image_pixel_A, lr_params.snr_band_A)
    return OrientationResult(
        diffraction=diffraction.astype(np.float32),
        image_hr=hr.astype(np.float32),
        image_lr=(counts / electrons_per_pixel).astype(np.float32),
        image_lr_clean=lr_clean.astype(np.float32),
        potential=projected.astype(np.float32),
        dose_e_per_A2=float(dose),
        snr_measured=float(snr),
    )


def poisson_counts(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of the given means, one uniform of `rng` per pixel, by inverting the CDF.

    numpy's sampler draws means ≥ 10 by rejection and so consumes a varying number of random
    numbers: a change of 1e-6 in one mean (FFT rounding) can change how many a pixel uses and
    shift the stream for the following pixels. Here pixel i always uses the i-th uniform u and
    gets the smallest k with CDF(k) ≥ u, so a change δ in a mean changes that pixel's count, by
    one, only when u lies within ~δ·pmf of a step of the CDF: a fraction ~δ of the pixels.

    k starts from the Cornish-Fisher estimate of the quantile (one `pdtr` call for its CDF) and
    then steps to the exact quantile with the pmf recurrence, usually in one or two steps.
    """
    from scipy.special import gammaln, ndtri, pdtr, xlogy

    mean = np.asarray(mean, dtype=np.float64)
    u = rng.random(mean.shape)
    z = np.clip(ndtri(u), -9.0, 9.0)  # u = 0 gives -inf; beyond ±9σ the steps below finish the job
    k = np.floor(np.clip(mean + np.sqrt(mean) * z + (z * z - 1.0) / 6.0, 0.0, None))
    k[mean == 0] = 0.0
    cdf = pdtr(k, mean)
    pmf = np.exp(xlogy(k, mean) - mean - gammaln(k + 1.0))
    while (up := cdf < u).any():  # too low: k + 1
        k += up
        pmf = np.where(up, pmf * mean / np.maximum(k, 1.0), pmf)
        cdf = np.where(up, cdf + pmf, cdf)
    while (down := (k > 0) & (cdf - pmf >= u)).any():  # CDF(k - 1) already reaches u: k - 1
        cdf = np.where(down, cdf - pmf, cdf)
        pmf = np.where(down, pmf * k / np.where(down, mean, 1.0), pmf)
        k -= down
    return k


def to_image_grid(image: np.ndarray, config: SimulationConfig) -> np.ndarray:
    return fourier_resample(crop_center(image, config.image_crop_px), config.image_size_px)


def crop_center(image: np.ndarray, size: int) -> np.ndarray:
    start_y = (image.shape[0] - size) // 2
    start_x = (image.shape[1] - size) // 2
    return image[start_y : start_y + size, start_x : start_x + size]


def fourier_resample(image: np.ndarray, size: int) -> np.ndarray:
    """Resample a square image to `size` pixels by cropping its spectrum; the mean is kept."""
    n = image.shape[0]
    if size == n:
        return image.copy()
    spectrum = np.fft.fftshift(np.fft.fft2(image))
    spectrum = crop_center(spectrum, size)
    return np.fft.ifft2(np.fft.ifftshift(spectrum)).real * (size / n) ** 2


def apply_envelope(image: np.ndarray, pixel_A: float, cutoff_inv_A: float, edge_inv_A: float) -> np.ndarray:
    """Low-pass: 1 below `cutoff - edge`, cosine taper to exactly 0 at `cutoff` and beyond."""
    k = spatial_frequencies(image.shape, pixel_A)
    envelope = np.clip((cutoff_inv_A - k) / max(edge_inv_A, 1e-12), 0.0, 1.0)
    envelope = np.sin(envelope * np.pi / 2) ** 2
    return np.fft.ifft2(np.fft.fft2(image) * envelope).real


def band_mask(shape: tuple[int, int], pixel_A: float, band_A: tuple[float, float]) -> np.ndarray:
    coarse_A, fine_A = band_A
    k = spatial_frequencies(shape, pixel_A)
    return (k >= 1.0 / coarse_A) & (k <= 1.0 / fine_A)


def dose_for_snr(clean: np.ndarray, pixel_A: float, band_A: tuple[float, float], snr: float) -> float:
    """Dose (e/Å²) at which Poisson noise leaves spectral SNR `snr` in the band.

    With d electrons per pixel the signal is d·I, white Poisson noise has power d·ΣI per DFT
    coefficient and the band's signal power is d²·P_B, so SSNR = d·P_B / (n_B·ΣI).
    """
    band = band_mask(clean.shape, pixel_A, band_A)
    band_power = float((np.abs(np.fft.fft2(clean))[band] ** 2).sum())
    if band_power <= 0:
        raise ValueError("the clean low-res image has no power in the SNR band; check cutoff_mrad and snr_band_A")
    electrons_per_pixel = snr * band.sum() * float(clean.sum()) / band_power
    return electrons_per_pixel / pixel_A**2


def spectral_snr(signal: np.ndarray, noisy: np.ndarray, pixel_A: float, band_A: tuple[float, float]) -> float:
    """Measured SSNR in the band: signal power over the power of (noisy − signal)."""
    band = band_mask(signal.shape, pixel_A, band_A)
    signal_power = (np.abs(np.fft.fft2(signal))[band] ** 2).sum()
    noise_power = (np.abs(np.fft.fft2(noisy - signal))[band] ** 2).sum()
    return float(signal_power / noise_power)
