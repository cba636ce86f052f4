"""From picks in the overview to phasing-ready particles: scan matching, diffraction and crops.

An overview pixel maps to a scan position through the inverse of the series' affine
(scan (y, x, 1) → overview (row, col)); the beam footprint is one scan step, so the position
nearest the particle's centre is the one whose frames saw it. Its summed frame is masked (bad
pixels from the detector's mask → mean of their neighbours), cut out around the measured beam
centre (whole pixels: the direct beam sits on one pixel), and normalised to the fraction of
electrons per pixel — the form `simed simulate dataset` stores and the phaser was trained on.
The low-res crop is the overview's image field around the pick.

Particles that cannot be phased honestly are flagged with the reason, never silently used:
outside the scan, missing frames (coverage below the minimum), no beam found, too close to the
detector's or the overview's edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simed_stream.arrays import crop_around
from simed_stream.errors import SimedError
from simed_stream.kernels import apply_pixel_mask
from simed_stream.optics import electron_wavelength_A
from simed_stream.phasing.classical import Geometry
from simed_stream.records import Particle, PositionSum


@dataclass(frozen=True)
class ScanCalibration:
    nav_shape: tuple[int, int]
    frames_per_position: int
    sig_shape: tuple[int, int]
    mrad_per_px: float
    energy_eV: float
    overview_pixel_A: float
    affine: np.ndarray  # 2×3, scan (y, x, 1) → overview (row, col)

    @classmethod
    def from_headers(cls, series_start: dict, overview_header: dict) -> "ScanCalibration":
        try:
            calibration = cls(tuple(series_start["scan"]["nav_shape"]), int(series_start["scan"]["frames_per_position"]),
                              tuple(series_start["detector"]["sig_shape"]), float(series_start["optics"]["mrad_per_px"]),
                              float(series_start["optics"]["energy_eV"]), float(overview_header["pixel_size_A"]),
                              np.asarray(overview_header["affine_scan_to_overview"], np.float64))
        except (KeyError, TypeError, ValueError) as error:
            raise SimedError(f"the series lacks calibration the phaser needs: {error!r} "
                             "(optics.mrad_per_px, optics.energy_eV, the overview's pixel size and affine)") from None
        linear = calibration.affine[:2, :2] if calibration.affine.shape == (2, 3) else None
        if linear is None or not np.all(np.isfinite(calibration.affine)) or np.linalg.cond(linear) > 1e6:
            raise SimedError(f"the overview's scan→overview affine {calibration.affine.tolist()} is not an "
                             "invertible 2×3 matrix: scan positions cannot be matched")
        return calibration

    def overview_to_scan(self, yx_px: np.ndarray) -> np.ndarray:
        """(n, 2) overview (row, col) → (n, 2) fractional scan (y, x)."""
        linear, offset = self.affine[:, :2], self.affine[:, 2]
        return np.linalg.solve(linear, (np.atleast_2d(yx_px) - offset).T).T

    def check_model(self, geometry: Geometry, tolerance: float = 0.01) -> None:
        """Refuse data the model cannot interpret: another angular or image sampling, or energy."""
        model_mrad = 1e3 * geometry.wavelength_A / geometry.box_A
        problems = []
        if abs(self.mrad_per_px / model_mrad - 1) > tolerance:
            problems.append(f"diffraction sampling {self.mrad_per_px:.4g} mrad/px vs the model's {model_mrad:.4g}")
        if abs(self.overview_pixel_A / geometry.image_pixel_A - 1) > tolerance:
            problems.append(f"overview pixel {self.overview_pixel_A:.4g} Å vs the model's {geometry.image_pixel_A:.4g} Å")
        if abs(electron_wavelength_A(self.energy_eV) / geometry.wavelength_A - 1) > tolerance:
            problems.append(f"beam energy {self.energy_eV / 1e3:.0f} keV does not give the model's wavelength "
                            f"{geometry.wavelength_A:.4g} Å")
        if problems:
            raise SimedError("the capture's calibration does not match the model: " + "; ".join(problems)
                             + ". Use a model trained for this calibration (see its model card).")


def pattern_side_px(geometry: Geometry, mrad_per_px: float) -> int:
    """Odd side of the cut-out pattern: up to the model's largest angle, the direct beam central."""
    return 2 * int(np.ceil(geometry.max_angle_mrad / mrad_per_px - 1e-6)) + 1


def match_to_scan(yx_overview_px: np.ndarray, calibration: ScanCalibration) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) integer scan positions nearest each pick, and whether it lies inside the scan."""
    scan = np.rint(calibration.overview_to_scan(yx_overview_px)).astype(np.int64)
    ny, nx = calibration.nav_shape
    inside = (scan[:, 0] >= 0) & (scan[:, 0] < ny) & (scan[:, 1] >= 0) & (scan[:, 1] < nx)
    return scan, inside


def cut_pattern(position_sum: np.ndarray, beam_centre_yx, side_px: int, bad_pixels: np.ndarray | None) -> np.ndarray | None:
    """The pattern centred on the beam (whole pixels) as a fraction of the electrons per pixel,
    or None if it leaves the detector or holds no counts."""
    frame = np.asarray(position_sum)
    if frame.dtype == np.float64:  # the kernels take detector dtypes; float32 holds any count sum exactly enough
        frame = frame.astype(np.float32)
    if bad_pixels is not None and bad_pixels.any():
        frame = apply_pixel_mask(frame, bad_pixels)
    pattern = crop_around(frame, beam_centre_yx, side_px)
    if pattern is None:
        return None
    pattern = pattern.astype(np.float64)
    total = pattern.sum()
    return pattern / total if total > 0 else None


def crop_overview(overview: np.ndarray, yx_px, size_px: int) -> np.ndarray | None:
    """The size_px² field centred on the pick (the image centre pixel is size/2), None at the edge."""
    field = crop_around(overview, yx_px, size_px)
    return None if field is None else np.asarray(field, np.float64)


def match_particles(picks_yx: np.ndarray, scores: np.ndarray, calibration: ScanCalibration) -> list[Particle]:
    """A Particle per pick with its scan position, or flagged when the scan did not cover it."""
    scan, inside = match_to_scan(picks_yx, calibration)
    particles = []
    for i, (yx, score) in enumerate(zip(np.atleast_2d(picks_yx), scores)):
        p = Particle(i, (float(yx[0]), float(yx[1])), float(score))
        if inside[i]:
            p.scan_yx = (int(scan[i, 0]), int(scan[i, 1]))
        else:
            p.flag = "outside the scan"
        particles.append(p)
    return particles


def fill_particle(p: Particle, position: PositionSum, overview: np.ndarray, calibration: ScanCalibration,
                  geometry: Geometry, bad_pixels: np.ndarray | None, min_coverage: float = 1.0) -> Particle:
    """Give a matched particle its centred pattern and low-res crop from its scan position's
    sum, or a flag saying why not (the sum is decompressed only when it is used)."""
    p.coverage = position.frames_counted / calibration.frames_per_position
    if p.coverage < min_coverage:
        p.flag = f"missing frames: coverage {p.coverage:.2f} < {min_coverage:.2f}"
        return p
    centre = position.beam_centre_yx
    if not np.all(np.isfinite(centre)):
        p.flag = "no direct beam found at its scan position"
        return p
    p.beam_centre_yx = (float(centre[0]), float(centre[1]))
    p.diffraction = cut_pattern(position.summed_frame(), centre, pattern_side_px(geometry, calibration.mrad_per_px),
                                bad_pixels)
    if p.diffraction is None:
        p.flag = "pattern cut by the detector edge (or no counts)"
        return p
    p.image_lr = crop_overview(overview, p.yx_overview_px, geometry.image_size_px)
    if p.image_lr is None:
        p.flag = "too close to the overview's edge for a full crop"
    return p


def check_overview(overview: np.ndarray, calibration: ScanCalibration) -> None:
    """The scanned patch must land inside the overview: else the affine or the image is wrong."""
    ny, nx = calibration.nav_shape
    corners = np.array([[0, 0, 1], [0, nx - 1, 1], [ny - 1, 0, 1], [ny - 1, nx - 1, 1]], np.float64)
    mapped = corners @ calibration.affine.T
    h, w = overview.shape
    if (mapped < -0.5).any() or (mapped[:, 0] > h - 0.5).any() or (mapped[:, 1] > w - 0.5).any():
        raise SimedError(f"overview/scan mismatch: the {ny}x{nx} scan maps to overview pixels "
                         f"{mapped.min(0).round(1).tolist()}..{mapped.max(0).round(1).tolist()}, outside the "
                         f"{h}x{w} overview (check the affine)")
