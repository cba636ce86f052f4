"""What the engine imposes on one particle, made from its pattern and its low-res image.

On the object grid (the diffraction's box at the image pixel; rfft2 layout n × (n//2 + 1)):
the measured amplitudes, split into imposed pixels and a few % held out (the free set, never
imposed: the R-factor on them tells a solution from a run that merely fitted what it was given),
the region beyond the data (kept at zero), the low-res estimate's spectrum (start phases) and
the support. Bad input is refused here with the reason, before any tensor is made.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from simed_stream.phasing.classical import Geometry, low_res_core, low_res_start, low_res_support, measured_amplitudes

#: a low-res "particle" larger than this fraction of the image field is not one particle (on the
#: training proteins the core reaches 45 % at the default threshold; pure noise 27 %)
MAX_CORE_FRACTION = 0.6


@dataclass
class Constraints:
    amplitude: np.ndarray
    imposed: np.ndarray  # measured and not held out
    free: np.ndarray  # measured, held out of the constraint
    beyond: np.ndarray  # beyond the data: kept at zero
    lowres: np.ndarray  # complex rfft2 of the Wiener estimate of σV
    support: np.ndarray  # (n, n) bool
    wiener: np.ndarray  # (n, n) the low-res estimate (for the final origin and hand)
    seed: int  # from the particle's data: its random starts do not depend on its batch


def check_input(diffraction: np.ndarray, image_lr: np.ndarray, geometry: Geometry) -> str | None:
    """Why this particle cannot be phased, or None."""
    if not np.all(np.isfinite(diffraction)):
        return "diffraction has non-finite values"
    if not np.all(np.isfinite(image_lr)):
        return "low-res image has non-finite values"
    if image_lr.shape != (geometry.image_size_px,) * 2:
        return f"low-res image is {image_lr.shape}, not {geometry.image_size_px}²"
    if diffraction.ndim != 2 or diffraction.shape[0] != diffraction.shape[1] or diffraction.shape[0] % 2 == 0:
        return f"diffraction must be square with an odd side (direct beam in the centre), got {diffraction.shape}"
    centre = diffraction.shape[0] // 2
    scattered = diffraction.copy()
    scattered[centre, centre] = 0.0
    if not np.any(scattered > 0):
        return "diffraction is empty (nothing scattered beyond the direct beam)"
    if np.ptp(image_lr) <= 0:
        return "low-res image is blank (no contrast)"
    return None


def support_problem(core: np.ndarray, support: np.ndarray) -> str | None:
    """Why a support cannot be used, or None. `core`: the low-res particle on the image field;
    `support`: the dilated support on the object grid (the box)."""
    if not core.any():
        return "the low-res image shows no particle (empty support)"
    if core.mean() > MAX_CORE_FRACTION:
        return (f"support covers the whole field: the low-res image's particle would fill {core.mean():.0%} of it "
                "(not one particle: ice, a crowded area or a gradient)")
    if support.mean() > 0.5:  # the `paper` preset's box is its image field: the support could fill it
        return (f"support covers {support.mean():.0%} of the box: oversampling below 2, the amplitudes cannot "
                "determine the phases")
    return None


def constraints_for(diffraction: np.ndarray, image_lr: np.ndarray, geometry: Geometry, settings
                    ) -> tuple[Constraints | None, str | None]:
    """(constraints, None) or (None, why not). `settings`: an `EngineSettings`."""
    diffraction = np.asarray(diffraction, np.float64)
    image_lr = np.asarray(image_lr, np.float64)
    problem = check_input(diffraction, image_lr, geometry)
    if problem:
        return None, problem
    half = geometry.grid_px // 2 + 1
    amplitude, known, beyond = (a[:, :half] for a in measured_amplitudes(diffraction, geometry))
    # the seed follows the particle's data, not its place in a batch: the same particle gives
    # the same search whether phased alone, live, or in a reprocess
    seed = zlib.crc32(np.ascontiguousarray(diffraction, np.float32).tobytes()) ^ (settings.seed * 0x9E3779B1 & 0xFFFFFFFF)
    # held-out pixels: never on the self-conjugate columns (0 and n/2), where the half spectrum
    # stores a pixel and its Friedel mate both
    candidates = known.copy()
    candidates[:, 0] = candidates[:, -1] = False
    free = candidates & (np.random.default_rng(seed).random(known.shape) < settings.free_fraction)
    core = low_res_core(image_lr, geometry, settings.support_threshold)
    support = low_res_support(image_lr, geometry, settings.support_dilation_A, core=core)
    problem = support_problem(core, support)
    if problem:
        return None, problem
    wiener = low_res_start(image_lr, geometry)
    return Constraints(amplitude, known & ~free, free, beyond, np.fft.rfft2(wiener), support, wiener, seed), None
