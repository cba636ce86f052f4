"""Batched phase retrieval: many particles × many starts in one float32 tensor (CPU threads or CUDA).

Per particle the engine recovers σV (real, non-negative, inside a support) from the measured
Fourier amplitudes, as the classical baseline does (`classical.py` explains the physics and the
object grid), but it searches instead of trying once:

1. **Support**: the low-res image's support dilated generously (`support_dilation_A`): a
   support that cuts the molecule can never be repaired (shrink-wrap only shrinks inside it),
   one that is too loose only costs iterations. Shrink-wrap tightens it inside during HIO.
2. **Population**: `starts` runs per particle from the low-res phases where the low-res image
   carries them and random phases beyond; optional soft low-res constraint in early iterations.
3. **Free R**: a few % of the measured pixels (`free_fraction`) are never imposed; the R-factor
   on them tells a solution from a run that has merely fitted the pixels it was given.
4. **Successive halving**: after each stage the worse half of the population (by free R) is
   dropped, so iterations go to the starts that pay.
5. **Alignment and averaging**: the best `keep` solutions are brought to a common origin and
   hand (translation and point inversion — the ambiguities of amplitudes), averaged, and the
   mean aligned to the low-res estimate; their agreement per Fourier ring (the phase-retrieval
   transfer function, PRTF) is the resolution estimate that needs no ground truth.

Bad input (non-finite values, an empty pattern, a blank low-res image, a support that fills the
field) is flagged on its particle with the reason; the other particles are phased as usual.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from simed_stream.arrays import crop_center
from simed_stream.phasing.classical import (Geometry, apply_origin_and_hand, find_origin_and_hand, low_res_core,
                                            low_res_start, low_res_support, measured_amplitudes)


@dataclass(frozen=True)
class EngineSettings:
    starts: int = 8
    # (coarsening, HIO iterations) per stage: the object grid is the full one divided by the
    # coarsening (the same box, a larger pixel, the data cropped to what it holds); after every
    # stage but the last the worse half of the population (by free R) is dropped
    schedule: tuple[tuple[int, int], ...] = ((4, 400), (2, 400), (2, 400), (1, 200))
    er_iterations: int = 50
    beta: float = 0.9
    support_threshold: float = 0.15  # of the low-res local power, from the background to the maximum
    support_dilation_A: float = 20.0
    shrinkwrap_every: int = 20
    shrinkwrap_sigma_px: tuple[float, float] = (3.0, 1.5)  # blur, from start to end of HIO
    shrinkwrap_threshold: float = 0.04  # of the blurred maximum
    lowres_weight: float = 0.0  # soft pull of the low-res phases in the first `lowres_iterations`
    lowres_iterations: int = 0
    free_fraction: float = 0.04
    keep: int = 3  # best solutions aligned and averaged
    # a particle whose kept solutions disagree (PRTF estimate coarser than this) is searched again
    # from new starts, up to `retries` times; the search with the lower free R is kept
    retry_above_A: float = 2.5
    retries: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.starts < 1 or self.keep < 1 or not self.schedule or self.er_iterations < 0:
            raise ValueError(f"engine settings out of range: {self}")
        for coarsening, iterations in self.schedule:
            if coarsening not in (1, 2, 4, 8) or iterations < 0:
                raise ValueError(f"schedule stages are (coarsening 1/2/4/8, iterations >= 0), got {self.schedule}")
        if not 0.0 <= self.free_fraction < 0.5:
            raise ValueError(f"free_fraction must lie in [0, 0.5), got {self.free_fraction}")

    @classmethod
    def from_json(cls, data: dict) -> "EngineSettings":
        """From a model card's or sidecar's JSON (lists back to tuples; unknown keys refused)."""
        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: tuples(v) for k, v in data.items()})

    def to_json(self) -> dict:
        def lists(value):
            return [lists(v) for v in value] if isinstance(value, tuple) else value

        return {k: lists(v) for k, v in self.__dict__.items()}

    @property
    def hio_iterations(self) -> int:
        return sum(iterations for _, iterations in self.schedule)

    def start_iterations(self) -> float:
        """Start-iterations spent per particle, in full-grid units (a grid coarser by c costs 1/c²)."""
        alive, total = self.starts, 0.0
        for i, (coarsening, stage) in enumerate(self.schedule):
            total += alive * stage / coarsening**2
            if i < len(self.schedule) - 1 and alive > self.keep:
                alive = max(self.keep, alive // 2)
        return total + alive * self.er_iterations


@dataclass
class EngineResult:
    sigma_v: np.ndarray  # (P, S, S) σV (rad) on the image grid: mean of the kept solutions, aligned
    best: np.ndarray  # (P, S, S) the lowest-free-R solution alone, aligned
    spread: np.ndarray  # (P, S, S) per-pixel std of the kept solutions (0 with keep = 1)
    r_free: np.ndarray  # (P,) free R of the best solution (NaN if no pixel was held out)
    r_work: np.ndarray  # (P,) R on the imposed pixels
    prtf: np.ndarray  # (P, rings) PRTF of the kept, aligned solutions per ring of the object grid
    prtf_frequency_inv_A: np.ndarray  # (rings,)
    resolution_A: np.ndarray  # (P,) where the PRTF falls below 1/e (NaN for flagged particles)
    searches: np.ndarray  # (P,) searches run (1 + retries used)
    flags: list = field(default_factory=list)  # per particle: None, or why it was not phased

    _PER_PARTICLE = ("sigma_v", "best", "spread", "r_free", "r_work", "prtf", "resolution_A")

    def take(self, other: "EngineResult", rows: list[int], into: list[int]) -> None:
        """Copy `other`'s rows into this result's rows `into`."""
        for name in self._PER_PARTICLE:
            getattr(self, name)[into] = getattr(other, name)[rows]


PRTF_THRESHOLD = 1.0 / math.e
#: a low-res "particle" larger than this fraction of the image field is not one particle (on the
#: training proteins the core reaches 45 % at the default threshold; pure noise 27 %)
MAX_CORE_FRACTION = 0.6


def select_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from simed_stream.errors import SimedError

        raise SimedError(f"device {device!r} asked for but CUDA is not available here")
    return torch.device(device)


@dataclass
class _Prepared:
    """One particle's constraints on the object grid (rfft2 layout: n × (n//2 + 1))."""

    amplitude: np.ndarray
    imposed: np.ndarray  # measured and not held out
    free: np.ndarray  # measured, held out of the constraint
    beyond: np.ndarray  # beyond the data: kept at zero
    lowres: np.ndarray  # complex rfft2 of the Wiener estimate of σV
    support: np.ndarray  # (n, n) bool
    wiener: np.ndarray  # (n, n) the low-res estimate (for the final origin/twin)
    seed: int


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


def prepare(diffraction: np.ndarray, image_lr: np.ndarray, geometry: Geometry, settings: EngineSettings
            ) -> tuple[_Prepared | None, str | None]:
    diffraction = np.asarray(diffraction, np.float64)
    image_lr = np.asarray(image_lr, np.float64)
    problem = check_input(diffraction, image_lr, geometry)
    if problem:
        return None, problem
    n = geometry.grid_px
    half = n // 2 + 1
    amplitude, known, beyond = (a[:, :half] for a in measured_amplitudes(diffraction, geometry))
    # the seed follows the particle's data, not its place in a batch: the same particle gives
    # the same result whether phased alone, live, or in a reprocess
    seed = zlib.crc32(np.ascontiguousarray(diffraction, np.float32).tobytes()) ^ (settings.seed * 0x9E3779B1 & 0xFFFFFFFF)
    rng = np.random.default_rng(seed)
    # held-out pixels: never on the self-conjugate columns (0 and n/2), where the half spectrum
    # stores a pixel and its Friedel mate both
    candidates = known.copy()
    candidates[:, 0] = candidates[:, -1] = False
    free = candidates & (rng.random(known.shape) < settings.free_fraction)
    core = low_res_core(image_lr, geometry, settings.support_threshold)
    support = low_res_support(image_lr, geometry, settings.support_dilation_A, core=core)
    problem = support_problem(core, support)
    if problem:
        return None, problem
    wiener = low_res_start(image_lr, geometry)
    lowres = np.fft.rfft2(wiener)
    return _Prepared(amplitude, known & ~free, free, beyond, lowres, support, wiener, seed), None


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


class PhaseRetrievalEngine:
    """Phase batches of particles: `engine(diffractions, images_lr)` → `EngineResult`."""

    def __init__(self, geometry: Geometry, settings: EngineSettings = EngineSettings(), device="auto"):
        self.geometry = geometry
        self.settings = settings
        self.device = select_device(device)
        n = geometry.grid_px
        ky = torch.fft.fftfreq(n, device=self.device)[:, None]
        kx = torch.fft.rfftfreq(n, device=self.device)[None, :]
        self._k2_px = (ky**2 + kx**2) * n * n  # |k|² in Fourier pixels², rfft2 layout
        k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]) * n
        self._rings = np.rint(k).astype(np.int64)
        self._lowband = torch.as_tensor(
            np.hypot(np.fft.fftfreq(n, geometry.image_pixel_A)[:, None], np.fft.rfftfreq(n, geometry.image_pixel_A)[None, :])
            <= geometry.cutoff_lr_mrad * 1e-3 / geometry.wavelength_A, device=self.device)

    def __call__(self, diffractions, images_lr) -> EngineResult:
        geometry, settings = self.geometry, self.settings
        size, n = geometry.image_size_px, geometry.grid_px
        prepared, flags = [], []
        for d, l in zip(diffractions, images_lr):
            p, flag = prepare(d, l, geometry, settings)
            prepared.append(p)
            flags.append(flag)
        count = len(prepared)
        rings = int(self._rings.max()) + 1
        result = EngineResult(
            sigma_v=np.zeros((count, size, size), np.float32), best=np.zeros((count, size, size), np.float32),
            spread=np.zeros((count, size, size), np.float32), r_free=np.full(count, np.nan),
            r_work=np.full(count, np.nan), prtf=np.full((count, rings), np.nan),
            prtf_frequency_inv_A=np.arange(rings) / (n * geometry.image_pixel_A),
            resolution_A=np.full(count, np.nan), searches=np.zeros(count, np.int64), flags=flags)
        todo = [i for i, p in enumerate(prepared) if p is not None]
        for attempt in range(settings.retries + 1):
            if not todo:
                break
            if attempt == 0:
                self._phase([prepared[i] for i in todo], todo, result, attempt)
            else:  # a second search from new starts; the one that fits the held-out data better wins
                again = self._empty_like(result)
                self._phase([prepared[i] for i in todo], todo, again, attempt)
                better = [i for i in todo if again.r_free[i] < result.r_free[i] or not np.isfinite(result.r_free[i])]
                result.take(again, better, better)
            result.searches[todo] += 1
            todo = [i for i in todo if not result.resolution_A[i] <= settings.retry_above_A]
        return result

    @staticmethod
    def _empty_like(result: EngineResult) -> EngineResult:
        def blank(name, value):
            if name not in EngineResult._PER_PARTICLE:
                return value
            return np.full_like(value, np.nan) if value.dtype.kind == "f" else np.zeros_like(value)

        return EngineResult(**{name: blank(name, value) for name, value in result.__dict__.items()})

    # -- the search -------------------------------------------------------------------------

    def _tensors(self, prepared: list[_Prepared]) -> dict:
        dev = self.device
        stack = lambda name, dtype: torch.as_tensor(np.stack([getattr(p, name) for p in prepared]), dtype=dtype, device=dev)[:, None]  # noqa: E731
        t = dict(amplitude=stack("amplitude", torch.float32), imposed=stack("imposed", torch.bool),
                 free=stack("free", torch.bool), beyond=stack("beyond", torch.bool),
                 lowres=stack("lowres", torch.complex64), outer=stack("support", torch.bool))
        t["imposed_amplitude"] = t["amplitude"] * t["imposed"]
        t["passed"] = (~(t["imposed"] | t["beyond"])).float()  # free pixels and the direct beam float
        t["lowres_imposed"] = self._lowband & t["imposed"]
        t["lowres_target"] = t["amplitude"] * t["lowres"] / t["lowres"].abs().clamp_min(1e-12)
        t["k2"] = self._k2_px
        return t

    def _starts(self, prepared: list[_Prepared], t: dict, attempt: int = 0) -> torch.Tensor:
        """Initial spectra: measured amplitudes, low-res phases inside the low-res band, random beyond."""
        s, n = self.settings.starts, self.geometry.grid_px
        phases = []
        for p in prepared:
            rng = np.random.default_rng([p.seed, attempt])
            phases.append(rng.uniform(0, 2 * np.pi, (s,) + p.amplitude.shape))
        random = torch.polar(torch.ones(1, device=self.device),
                             torch.as_tensor(np.stack(phases), dtype=torch.float32, device=self.device))
        lowres_phase = t["lowres"] / t["lowres"].abs().clamp_min(1e-12)
        phase = torch.where(self._lowband, lowres_phase, random)
        spectrum = torch.where(t["imposed"] | t["free"], t["amplitude"] * phase, t["lowres"])
        v = torch.fft.irfft2(spectrum, s=(n, n))
        return torch.where(t["outer"], v, torch.zeros((), device=self.device))

    def _phase(self, prepared: list[_Prepared], indices: list[int], result: EngineResult, attempt: int = 0) -> None:
        settings, n = self.settings, self.geometry.grid_px
        full = self._tensors(prepared)
        v = self._starts(prepared, full, attempt)  # (P, S, n, n)
        support = full["outer"].expand_as(v).clone()
        schedule = [(n // coarsening, stage) for coarsening, stage in settings.schedule]
        total_hio = settings.hio_iterations
        done, level_px, t = 0, n, full
        for index, (grid_px, stage) in enumerate(schedule):
            if grid_px != level_px:
                v, support = _resample_real(v, grid_px), _resample_mask(support, grid_px)
                t, level_px = self._level(full, grid_px), grid_px
            for _ in range(stage):
                v, support = self._hio_step(v, support, t, done, total_hio)
                done += 1
            if index < len(schedule) - 1 and v.shape[1] > settings.keep:
                keep = max(settings.keep, v.shape[1] // 2)
                r_free, _ = self._r_factors(self._solution(v, support), t)
                order = torch.argsort(r_free, dim=1)[:, :keep]
                v = torch.take_along_dim(v, order[:, :, None, None], dim=1)
                support = torch.take_along_dim(support, order[:, :, None, None], dim=1)
        if level_px != n:
            v, support, t = _resample_real(v, n), _resample_mask(support, n), full
        for _ in range(settings.er_iterations):
            v = self._er_step(v, support, t)
        solution = self._solution(v, support)
        r_free, r_work = self._r_factors(solution, t)
        order = torch.argsort(r_free if settings.free_fraction > 0 else r_work, dim=1)[:, : settings.keep]
        kept = torch.take_along_dim(solution, order[:, :, None, None], dim=1)
        aligned = self._align_to_best(kept)
        self._finish(prepared, indices, aligned, torch.take_along_dim(r_free, order, 1)[:, 0],
                     torch.take_along_dim(r_work, order, 1)[:, 0], t, result)

    def _level(self, full: dict, grid_px: int) -> dict:
        """The constraints on a coarser object grid: the same box, a larger pixel, the spectrum
        cropped to what that grid holds (amplitudes rescaled for the unnormalised DFT)."""
        n = self.geometry.grid_px
        t = {name: _crop_spectrum(full[name], grid_px)
             for name in ("amplitude", "imposed", "free", "beyond", "lowres", "imposed_amplitude", "passed",
                          "lowres_imposed", "lowres_target")}
        scale = (grid_px / n) ** 2
        for name in ("amplitude", "imposed_amplitude", "lowres", "lowres_target"):
            t[name] = t[name] * scale
        t["outer"] = _resample_mask(full["outer"], grid_px)
        t["k2"] = _crop_spectrum(full["k2"], grid_px)
        return t

    def _project_fourier(self, v: torch.Tensor, t: dict, lowres_weight: float = 0.0) -> torch.Tensor:
        """Magnitudes onto the measured ones where imposed, zero beyond the data, the rest kept.

        One real factor per coefficient, A/|g| where imposed, 1 or 0 elsewhere (g·A/|g| is the
        same projection as A·exp(i·angle g) at half the cost), applied on the real view of the
        spectrum: complex-by-real products in torch would promote and copy."""
        spectrum = torch.fft.rfft2(v)
        magnitude = spectrum.abs().clamp_min_(1e-12)
        factor = torch.addcdiv(t["passed"], t["imposed_amplitude"], magnitude)
        torch.view_as_real(spectrum).mul_(factor.unsqueeze(-1))
        if lowres_weight > 0:
            pulled = (1 - lowres_weight) * spectrum + lowres_weight * t["lowres_target"]
            spectrum = torch.where(t["lowres_imposed"], pulled, spectrum)
        return torch.fft.irfft2(spectrum, s=v.shape[-2:])

    def _hio_step(self, v, support, t, iteration: int, total: int):
        s = self.settings
        weight = s.lowres_weight * max(0.0, 1.0 - iteration / s.lowres_iterations) if s.lowres_iterations else 0.0
        projected = self._project_fourier(v, t, weight)
        good = (projected > 0).logical_and_(support)
        v = torch.where(good, projected, v.sub_(projected, alpha=s.beta))
        if s.shrinkwrap_every and iteration % s.shrinkwrap_every == s.shrinkwrap_every - 1:
            fraction = iteration / max(total - 1, 1)
            sigma = s.shrinkwrap_sigma_px[0] + fraction * (s.shrinkwrap_sigma_px[1] - s.shrinkwrap_sigma_px[0])
            blurred = _blur(v.clamp_min(0), sigma * v.shape[-1] / self.geometry.grid_px, t["k2"])
            peak = blurred.amax(dim=(-2, -1), keepdim=True)
            support = t["outer"] & (blurred > s.shrinkwrap_threshold * peak)
        return v, support

    def _er_step(self, v, support, t):
        projected = self._project_fourier(v, t)
        return projected.mul_((projected > 0).logical_and_(support))

    @staticmethod
    def _solution(v, support):
        return torch.where(support & (v > 0), v, torch.zeros((), device=v.device))

    @staticmethod
    def _r_factors(solution: torch.Tensor, t: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(free R, working R) per (particle, start): Σ| |F| − A | / Σ A over the pixel set."""
        magnitude = torch.fft.rfft2(solution).abs()
        residual = (magnitude - t["amplitude"]).abs()

        def r(mask):
            num = torch.where(mask, residual, 0).sum(dim=(-2, -1))
            den = torch.where(mask, t["amplitude"], 0).sum(dim=(-2, -1)).clamp_min(1e-12)
            return num / den

        free = r(t["free"]) if bool(t["free"].any()) else torch.full(magnitude.shape[:2], float("nan"), device=solution.device)
        return free, r(t["imposed"])

    # -- alignment, averaging, resolution -----------------------------------------------------

    def _align_to_best(self, kept: torch.Tensor) -> torch.Tensor:
        """Each kept solution moved onto the first (the best): integer shift + hand, then sub-pixel."""
        if kept.shape[1] == 1:
            return kept
        n = kept.shape[-1]
        spectra = torch.fft.rfft2(kept)
        reference = spectra[:, :1]
        aligned = [kept[:, :1]]
        for j in range(1, kept.shape[1]):
            candidate = spectra[:, j : j + 1]
            direct = torch.fft.irfft2(reference * candidate.conj(), s=(n, n))
            twin = torch.fft.irfft2(reference * candidate, s=(n, n))  # the point-inverted copy's spectrum is conj
            use_twin = twin.amax(dim=(-2, -1)) > direct.amax(dim=(-2, -1))
            spectrum = torch.where(use_twin[..., None, None], candidate.conj(), candidate)
            correlation = torch.where(use_twin[..., None, None], twin, direct)
            shift = _subpixel_peak(correlation)
            aligned.append(torch.fft.irfft2(spectrum * self._ramp(shift, n), s=(n, n)))
        return torch.cat(aligned, dim=1)

    def _ramp(self, shift_px: torch.Tensor, n: int) -> torch.Tensor:
        """Fourier factor that moves an object by +shift (P, 1, 2) pixels (rfft2 layout)."""
        ky = torch.fft.fftfreq(n, device=shift_px.device)[:, None]
        kx = torch.fft.rfftfreq(n, device=shift_px.device)[None, :]
        angle = -2 * math.pi * (ky * shift_px[..., 0, None, None] + kx * shift_px[..., 1, None, None])
        return torch.polar(torch.ones_like(angle), angle)

    def _finish(self, prepared, indices, aligned, r_free, r_work, t, result: EngineResult) -> None:
        size = self.geometry.image_size_px
        mean = aligned.mean(dim=1)
        spectra = torch.fft.rfft2(aligned)
        phasors = spectra / spectra.abs().clamp_min(1e-12)
        coherence = phasors.mean(dim=1).abs()  # (P, n, m)
        k = aligned.shape[1]
        if k > 1:  # |mean of k random phasors|² is 1/k on average: remove that bias
            coherence = ((k * coherence**2 - 1) / (k - 1)).clamp_min(0).sqrt()
        known = (t["imposed"] | t["free"])[:, 0]
        weights = (t["amplitude"][:, 0] * known).cpu().numpy().astype(np.float64)
        coherence = coherence.cpu().numpy().astype(np.float64)
        rings = self._rings
        n_rings = result.prtf.shape[1]
        mean_np, best_np = mean.cpu().numpy().astype(np.float64), aligned[:, 0].cpu().numpy().astype(np.float64)
        std_np = aligned.std(dim=1).cpu().numpy() if k > 1 else np.zeros_like(mean_np)
        for row, (p, index) in enumerate(zip(prepared, indices)):
            # amplitude-weighted PRTF per ring, over the measured pixels
            w = weights[row]
            total = np.bincount(rings.ravel(), w.ravel(), n_rings)
            prtf = np.bincount(rings.ravel(), (w * coherence[row]).ravel(), n_rings) / np.where(total > 0, total, np.nan)
            result.prtf[index] = prtf
            result.resolution_A[index] = _crossing_A(prtf, result.prtf_frequency_inv_A, PRTF_THRESHOLD)
            twin, shift = find_origin_and_hand(mean_np[row], p.wiener, self.geometry)
            result.sigma_v[index] = crop_center(apply_origin_and_hand(mean_np[row], twin, shift), size)
            result.best[index] = crop_center(apply_origin_and_hand(best_np[row], twin, shift), size)
            result.spread[index] = crop_center(apply_origin_and_hand(std_np[row], twin, shift), size)
            result.r_free[index] = float(r_free[row])
            result.r_work[index] = float(r_work[row])


def _blur(v: torch.Tensor, sigma_px: float, k2_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (σ in pixels of v's grid) by its Fourier transfer function."""
    n = v.shape[-1]
    return torch.fft.irfft2(torch.fft.rfft2(v) * torch.exp(-2 * math.pi**2 * sigma_px**2 * k2_px / n**2), s=v.shape[-2:])


def _spectrum_rows(n: int, grid_px: int) -> torch.Tensor:
    """Rows of an n-point rfft2 layout that a grid_px-point layout holds (fftfreq order)."""
    half = grid_px // 2
    return torch.cat([torch.arange(0, half), torch.arange(n - half, n)])


def _crop_spectrum(x: torch.Tensor, grid_px: int) -> torch.Tensor:
    rows = _spectrum_rows(x.shape[-2], grid_px).to(x.device)
    return x.index_select(-2, rows)[..., : grid_px // 2 + 1]


def _resample_real(v: torch.Tensor, grid_px: int) -> torch.Tensor:
    """A real image on a grid of grid_px points over the same box, by cropping or zero-padding
    its spectrum (values kept: the unnormalised DFT scales with the number of points)."""
    n = v.shape[-1]
    spectrum = torch.fft.rfft2(v)
    if grid_px < n:
        out = _crop_spectrum(spectrum, grid_px)
    else:
        out = torch.zeros(v.shape[:-2] + (grid_px, grid_px // 2 + 1), dtype=spectrum.dtype, device=v.device)
        rows = _spectrum_rows(grid_px, n).to(v.device)
        out[..., rows, : n // 2 + 1] = spectrum
    return torch.fft.irfft2(out * (grid_px / n) ** 2, s=(grid_px, grid_px))


def _resample_mask(mask: torch.Tensor, grid_px: int) -> torch.Tensor:
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


def _subpixel_peak(correlation: torch.Tensor) -> torch.Tensor:
    """(P, 1, 2) position of each map's maximum, refined by a parabola per axis, in (−n/2, n/2]."""
    n = correlation.shape[-1]
    flat = correlation.flatten(-2).argmax(dim=-1)
    iy, ix = flat // n, flat % n
    out = []
    for axis, index in ((0, iy), (1, ix)):
        def at(offset):
            yy = (iy + offset) % n if axis == 0 else iy
            xx = (ix + offset) % n if axis == 1 else ix
            return torch.take_along_dim(correlation.flatten(-2), (yy * n + xx)[..., None], -1)[..., 0]

        before, centre, after = at(-1), at(0), at(1)
        curvature = before - 2 * centre + after
        offset = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp_max(-1e-30), torch.zeros_like(centre))
        out.append((index.to(correlation.dtype) + offset + n / 2) % n - n / 2)
    return torch.stack(out, dim=-1)


def _crossing_A(curve: np.ndarray, frequency_inv_A: np.ndarray, threshold: float) -> float:
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
