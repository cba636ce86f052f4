"""Find particles in an overview image, and score picks against known positions.

An overview is a noisy, strongly defocused low-resolution TEM image (1000 Å, 5 mrad aperture):
background ≈ 1, proteins of 25–60 Å. Two response maps, matched to the particle size:

- `method="power"` (the default): local power. A weak phase object under strong defocus has
  almost no contrast at the particle's own scale — its CTF is ~0 there — and shows as a patch
  of fine (4–15 Å) fringes of both signs. The image is band-passed at full resolution, squared,
  block-averaged and smoothed over the particle size; polarity does not apply. On simulated
  `cpu`-preset scans the DoG below found none of 10 particles at 3σ; see docs/particles.md.
- `method="dog"`: a difference-of-Gaussians band-pass, for overviews with amplitude contrast
  (blobs of a few % contrast whose sign the defocus decides, with faint fringes of the
  opposite sign around them). DoG = G(σ₁) − G(σ₂) with σ₁ = s/√1.6 and σ₂ = s·√1.6,
  s = diameter/(2√2): s is the scale at which a Laplacian of Gaussian responds most to a disc
  of that diameter (σ = R/√2), and σ₂/σ₁ = 1.6 is Marr & Hildreth's closest DoG to that LoG.
  It removes pixel noise and slow background (ice gradient, illumination) alike. On the
  synthetic overviews of the tests the wider band σ₁ = s/1.6, σ₂ = 1.6·s gave slightly lower
  peak SNR (20.4σ vs 21.9σ) and 1.5× the position error (median 1.8 px vs 1.2 px). Positive
  response = brighter than surroundings.

Both work on a block-averaged image (`skimage.measure.block_reduce`) in which a particle spans
about `_TARGET_DIAMETER_BIN_PX` binned pixels: averaging is what a band-pass at this scale does
to the noise anyway, and it makes the filters cheap on 3072² overviews. Then, for both:

- The response is standardised by its median and robust spread (1.4826 × MAD): particles cover
  a small part of the field, so they barely move these, and `threshold_sigma` is then a number
  of background sigmas.
- Peaks of the absolute response are found with `skimage.feature.peak_local_max`, at least
  `min_separation_A` apart, so the strongest extremum in a neighbourhood wins whatever its sign;
  then a sidelobe veto drops a peak when an extremum of the opposite sign within
  `_SIDELOBE_RADIUS_DIAMETERS` diameters is stronger. A DoG (and the particle's own defocus
  fringes) surrounds every blob with a weaker ring of the opposite sign, out to about
  R + 2σ₂ ≈ 1.4 diameters, that would otherwise be picked as a particle of the other polarity.
  With the default separation (one diameter) the suppression alone mostly removes these rings;
  with a smaller separation (crowded fields) they are picked without the veto.
  The cost: in an image that really holds both polarities, a weak particle right beside a
  stronger one of the other sign is lost.
- `polarity` keeps only dark or bright peaks; "auto" keeps both.
- Positions are refined to sub-pixel precision by a parabola through the peak and its
  neighbours along each axis of the binned response.
- Peaks closer than `edge_A` to the border are dropped; by default one particle radius. Two
  reasons: such a particle is cut by the border (it could not be boxed anyway), and the
  reflecting boundary of the filters, together with a border pixel needing to beat only half a
  neighbourhood to be a local maximum, makes noise peaks there far stronger than inside. On
  pure-noise 1408² overviews (12 seeds, demo dose) every noise peak above 5σ lay within 10 px of
  the border (7 of them, up to 8σ; the strongest inside was 4.4σ); with the default exclusion
  there were none.

Pick scoring is one-to-one matching with `scipy.optimize.linear_sum_assignment`, only pairs
within the radius counting, as Topaz's `match_coordinates` does; the cost here (see
`score_picks`) makes the number of matches the first objective and distance only the tie-break.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from simed_stream.config import Settings, cli
from simed_stream.errors import SimedError

_TARGET_DIAMETER_BIN_PX = 16.0  # a particle spans this many binned pixels: σ₁ ≈ 4.5 px, well sampled
_POWER_BAND_A = (1.0, 4.0)  # Gaussian σ (Å) of the band-pass whose power the "power" method maps
_SIGMA_FACTOR = np.sqrt(1.6)  # σ₁ = s/√1.6, σ₂ = s·√1.6: the Marr–Hildreth ratio σ₂/σ₁ = 1.6
_MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per median absolute deviation
_SIDELOBE_RADIUS_DIAMETERS = 1.6  # DoG sidelobes of a disc reach ~R + 2σ₂ ≈ 1.4 diameters; some margin


class LocaliseError(SimedError, ValueError):
    """An overview, pixel size or pick setting that cannot be used."""


class PickSettings(Settings):
    diameter_A: float = Field(40.0, gt=0, allow_inf_nan=False, description="particle diameter for picking (Å)")
    threshold_sigma: float = Field(5.0, gt=0, allow_inf_nan=False, description="pick threshold in robust "
                                   "(MAD) sigmas of the background of the filtered image",
                                   json_schema_extra=cli("--threshold-sigma", "--threshold"))
    min_separation_A: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="closest two picks "
                                              "may be (Å; default: one diameter)")
    edge_A: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="ignore peaks closer than this "
                                    "to the overview's border (Å; default: one radius)")
    method: Literal["power", "dog"] = Field("power", description="power: local power of the 4–15 Å band (phase "
                                            "contrast); dog: difference of Gaussians (amplitude contrast)",
                                            json_schema_extra=cli("--pick-method"))
    polarity: Literal["dark", "bright", "auto"] = Field("auto", description="dog only: dark or bright blobs, or "
                                                        "both (the defocus decides the sign)",
                                                        json_schema_extra=cli("--pick-polarity"))


@dataclass
class Picks:
    yx_px: np.ndarray  # (n, 2) float64 (row, col) in overview pixels, sub-pixel refined
    score: np.ndarray  # (n,) |filtered response| in background sigmas (≥ threshold), strongest first
    polarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # (n,) −1 dark, +1 bright

    def __len__(self) -> int:
        return len(self.score)


def _check_overview(overview: np.ndarray, pixel_size_A: float) -> np.ndarray:
    image = np.asarray(overview)
    if image.ndim != 2:
        raise LocaliseError(f"overview must be a 2-D image, got an array of shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise LocaliseError(f"overview must hold real numbers, got dtype {image.dtype}")
    if not np.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise LocaliseError(f"pixel size must be a positive number of Å, got {pixel_size_A}")
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise LocaliseError(f"overview holds {bad} non-finite pixels (NaN or inf)")
    return image


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor × factor blocks (float64); the last rows/columns that do not fill a
    block are dropped, where block_reduce would pad them with zeros."""
    from skimage.measure import block_reduce

    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return block_reduce(np.asarray(image[:h, :w], np.float64), (factor, factor), np.mean)


def _parabola_offset(minus: float, centre: float, plus: float) -> float:
    """Vertex of the parabola through three equally spaced samples, relative to the centre, in [−½, ½]."""
    curvature = minus - 2.0 * centre + plus
    if curvature >= 0:  # not a maximum along this axis (flat or saddle): keep the grid position
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


def band_pass_sigma_px(diameter_px: float) -> tuple[float, float]:
    """(σ₁, σ₂) of the difference of Gaussians for particles of `diameter_px`, in those pixels."""
    s = diameter_px / (2.0 * np.sqrt(2.0))
    return s / _SIGMA_FACTOR, s * _SIGMA_FACTOR


def find_particles(overview: np.ndarray, pixel_size_A: float, settings: PickSettings = PickSettings()) -> Picks:
    """Particle centres in an overview image (see the module docstring for the method).

    Returns picks strongest first. Picks lie in the part of the image covered by whole bins
    (the last few rows/columns, fewer than one bin, are not searched). A constant image has no
    noise to measure and gives no picks. Raises LocaliseError (a ValueError) on a non-2-D or
    non-finite overview or a non-positive pixel size (invalid settings cannot be built:
    `PickSettings` raises a ConfigError)."""
    image = _check_overview(overview, pixel_size_A)
    diameter_px = settings.diameter_A / pixel_size_A
    if min(image.shape) < diameter_px:
        raise LocaliseError(f"overview of {image.shape[1]}×{image.shape[0]} px is smaller than one particle "
                            f"({diameter_px:.0f} px across at {pixel_size_A} Å/px)")
    factor = max(1, int(diameter_px / _TARGET_DIAMETER_BIN_PX))
    z = _standardised_response(image, pixel_size_A, settings.method, factor, diameter_px / factor)
    if z is None:
        return Picks(np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int8))
    return _peaks(z, image.shape, pixel_size_A, settings, factor, diameter_px / factor)


def _standardised_response(image: np.ndarray, pixel_size_A: float, method: str, factor: int,
                           diameter_bin: float) -> np.ndarray | None:
    """The binned response map in robust background sigmas; None when it has no spread."""
    from scipy.ndimage import gaussian_filter

    if method == "power":
        # a weak phase object under strong defocus has almost no contrast below the CTF's first
        # maximum (~7 Å at 1000 Å, 200 kV): its mean is background, its fine-band power is not
        band = gaussian_filter(image, _POWER_BAND_A[0] / pixel_size_A) - gaussian_filter(image, _POWER_BAND_A[1] / pixel_size_A)
        binned = _block_mean(band**2, factor)
        response = gaussian_filter(binned, diameter_bin / (2.0 * np.sqrt(2.0)), mode="reflect")
    else:
        sigma1, sigma2 = band_pass_sigma_px(diameter_bin)
        binned = _block_mean(image, factor)
        response = gaussian_filter(binned, sigma1, mode="reflect") - gaussian_filter(binned, sigma2, mode="reflect")
    centre = np.median(response)
    spread = _MAD_TO_SIGMA * np.median(np.abs(response - centre))
    if not spread > 0:
        spread = float(np.std(response))
    return (response - centre) / spread if spread > 0 else None


def _peaks(z: np.ndarray, image_shape: tuple[int, int], pixel_size_A: float, settings: PickSettings, factor: int,
           diameter_bin: float) -> Picks:
    """Separated extrema of `z` above the threshold, sidelobes vetoed, refined, away from the border."""
    from skimage.feature import peak_local_max

    magnitude = np.abs(z)
    separation_A = settings.diameter_A if settings.min_separation_A is None else settings.min_separation_A
    min_distance = max(1, round(separation_A / pixel_size_A / factor))
    peaks = peak_local_max(magnitude, min_distance=min_distance, threshold_abs=settings.threshold_sigma,
                           exclude_border=False)
    veto_radius = int(np.ceil(_SIDELOBE_RADIUS_DIAMETERS * diameter_bin))
    offsets = np.arange(-veto_radius, veto_radius + 1)
    disc = np.hypot(offsets[:, None], offsets[None, :]) <= veto_radius
    wanted = (1,) if settings.method == "power" else {"dark": (-1,), "bright": (1,), "auto": (-1, 1)}[settings.polarity]
    edge_px = (settings.diameter_A / 2 if settings.edge_A is None else settings.edge_A) / pixel_size_A
    height, width = image_shape
    yx, scores, signs = [], [], []
    for row, col in peaks:
        sign = 1 if z[row, col] > 0 else -1
        if sign not in wanted:
            continue
        # sidelobe veto: a stronger extremum of the other sign nearby is the blob this ring belongs to
        r0, r1 = max(row - veto_radius, 0), min(row + veto_radius + 1, z.shape[0])
        c0, c1 = max(col - veto_radius, 0), min(col + veto_radius + 1, z.shape[1])
        window = disc[r0 - row + veto_radius:r1 - row + veto_radius, c0 - col + veto_radius:c1 - col + veto_radius]
        if (-sign * z[r0:r1, c0:c1])[window].max() > magnitude[row, col]:
            continue
        dy = _parabola_offset(*(magnitude[row - 1:row + 2, col] if 0 < row < z.shape[0] - 1 else (0.0, 1.0, 0.0)))
        dx = _parabola_offset(*(magnitude[row, col - 1:col + 2] if 0 < col < z.shape[1] - 1 else (0.0, 1.0, 0.0)))
        # centre of bin i in overview pixels is (i + ½)·factor − ½
        y, x = (row + dy + 0.5) * factor - 0.5, (col + dx + 0.5) * factor - 0.5
        if min(y, x, height - 1 - y, width - 1 - x) < edge_px:
            continue
        yx.append((y, x))
        scores.append(magnitude[row, col])
        signs.append(sign)
    return Picks(np.asarray(yx, np.float64).reshape(-1, 2), np.asarray(scores, np.float64), np.asarray(signs, np.int8))


@dataclass
class PickScore:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    matched: list[tuple[int, int]]  # (pick index, truth index)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["matched"] = [[int(p), int(t)] for p, t in self.matched]
        return out


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, np.float64)
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2:
        raise LocaliseError(f"{name} must be an (n, 2) array of (row, col), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise LocaliseError(f"{name} holds non-finite coordinates")
    return array


def score_picks(picks_yx: np.ndarray, truth_yx: np.ndarray, radius_px: float) -> PickScore:
    """Precision, recall and F1 of picks against true positions, matched one-to-one.

    A pick and a truth may match when they are at most `radius_px` apart. Among those pairs the
    matching with the most pairs is taken and, of those, the one with the smallest total
    distance (linear_sum_assignment with pairs beyond the radius given a cost larger than any
    sum of allowed distances), so one pick never counts for two particles and a greedy
    nearest-first choice cannot steal a pick that a second particle needed.

    P = TP / picks, R = TP / truths, F1 = 2PR / (P + R). Empty inputs: with neither picks nor
    truths everything is 1.0 (nothing to find, nothing wrongly found); with picks but no truths,
    or truths but no picks, P = R = F1 = 0."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    if not (np.isfinite(radius_px) and radius_px > 0):
        raise LocaliseError(f"matching radius must be a positive number of pixels, got {radius_px}")
    picks, truth = _as_points(picks_yx, "picks"), _as_points(truth_yx, "truth positions")

    matched: list[tuple[int, int]] = []
    if len(picks) and len(truth):
        # only picks and truths with a partner within the radius take part: keeps the matrix small
        pairs = cKDTree(picks).sparse_distance_matrix(cKDTree(truth), radius_px, output_type="ndarray")
        if len(pairs):
            rows, row_index = np.unique(pairs["i"], return_inverse=True)
            cols, col_index = np.unique(pairs["j"], return_inverse=True)
            forbidden = radius_px * (min(len(rows), len(cols)) + 1)  # exceeds any total of allowed distances
            cost = np.full((len(rows), len(cols)), forbidden)
            cost[row_index, col_index] = pairs["v"]
            assigned_rows, assigned_cols = linear_sum_assignment(cost)
            keep = cost[assigned_rows, assigned_cols] < forbidden
            matched = sorted((int(rows[r]), int(cols[c])) for r, c in zip(assigned_rows[keep], assigned_cols[keep]))

    tp = len(matched)
    fp, fn = len(picks) - tp, len(truth) - tp
    if len(picks) == 0 and len(truth) == 0:
        precision = recall = 1.0
    else:
        precision = tp / len(picks) if len(picks) else 0.0
        recall = tp / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PickScore(float(precision), float(recall), float(f1), tp, fp, fn, matched)
