"""Batched phase retrieval: many particles × many starts in one float32 tensor (CPU threads or CUDA).

Per particle the engine recovers σV (real, non-negative, inside a support) from the measured
Fourier amplitudes, as the classical baseline does (`classical.py` explains the physics and the
object grid), but it searches instead of trying once (choices and ablations: docs/phasing.md):

1. **Support** (`constraints.py`): the low-res image's support dilated generously — a support
   that cuts the molecule can never be repaired (shrink-wrap only shrinks inside it), one that
   is too loose only costs iterations. Shrink-wrap tightens it inside during HIO.
2. **Population**: `starts` runs per particle from the low-res phases where the low-res image
   carries them and random phases beyond (optionally pulled towards the low-res phases early on).
3. **Coarse to fine**: the first stages run on coarser object grids (the same box, larger
   pixels, the data cropped to what they hold) where an iteration costs 1/4 or 1/16: the global
   search is done there, the full grid only extends the phases to the data's edge.
4. **Free R and successive halving**: after every stage the worse half of the population by the
   R-factor on held-out pixels is dropped, so iterations go to the starts that pay.
5. **Consensus** (`consensus.py`): the best `keep` solutions are aligned (origin and hand),
   averaged and the mean aligned to the low-res estimate; their agreement per ring (PRTF) is the
   resolution estimate. A particle whose solutions disagree is searched again from new starts.

Bad input is flagged on its particle with the reason; the other particles are phased as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from simed_stream.arrays import crop_center
from simed_stream.phasing import iterations as it
from simed_stream.phasing.classical import Geometry, apply_origin_and_hand, find_origin_and_hand
from simed_stream.phasing.consensus import align_to_best, crossing_A, phasor_coherence, ring_average
from simed_stream.phasing.constraints import Constraints, constraints_for


@dataclass(frozen=True)
class EngineSettings:
    starts: int = 8
    # (coarsening, HIO iterations) per stage: the object grid is the full one divided by the
    # coarsening; after every stage but the last the worse half of the population is dropped
    schedule: tuple[tuple[int, int], ...] = ((4, 400), (2, 400), (2, 400), (1, 200))
    er_iterations: int = 50
    beta: float = 0.9
    support_threshold: float = 0.15  # of the low-res local power, from the background to the maximum
    support_dilation_A: float = 20.0
    shrinkwrap_every: int = 20
    shrinkwrap_sigma_px: tuple[float, float] = (3.0, 1.5)  # blur in full-grid pixels, from start to end of HIO
    shrinkwrap_threshold: float = 0.04  # of the blurred maximum
    lowres_weight: float = 0.0  # soft pull of the low-res phases, fading over `lowres_iterations`
    lowres_iterations: int = 0
    free_fraction: float = 0.04
    keep: int = 3  # best solutions aligned and averaged
    # a particle whose kept solutions disagree (PRTF estimate coarser than this) is searched again
    # from new starts, up to `retries` times; the search with the lower free R is kept
    retry_above_A: float = 2.5
    retries: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.starts < 1 or self.keep < 1 or not self.schedule or self.er_iterations < 0 or self.retries < 0:
            raise ValueError(f"engine settings out of range: {self}")
        for coarsening, iterations in self.schedule:
            if coarsening not in (1, 2, 4, 8) or iterations < 0:
                raise ValueError(f"schedule stages are (coarsening 1/2/4/8, iterations >= 0), got {self.schedule}")
        if not 0.0 <= self.free_fraction < 0.5:
            raise ValueError(f"free_fraction must lie in [0, 0.5), got {self.free_fraction}")

    @classmethod
    def from_json(cls, data: dict) -> "EngineSettings":
        """From a phaser card's JSON (lists back to tuples; unknown keys refused)."""
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
        """Start-iterations spent per particle and search, in full-grid units (a grid coarser by c costs 1/c²)."""
        alive, total = self.starts, 0.0
        for i, (coarsening, stage) in enumerate(self.schedule):
            total += alive * stage / coarsening**2
            if i < len(self.schedule) - 1 and alive > self.keep:
                alive = max(self.keep, alive // 2)
        return total + alive * self.er_iterations


#: what a search gives per particle (`searches` counts them; the rest describes the batch)
PER_PARTICLE = ("sigma_v", "best", "spread", "r_free", "r_work", "prtf", "resolution_A")


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

    @classmethod
    def empty(cls, count: int, geometry: Geometry, rings: int) -> "EngineResult":
        size = geometry.image_size_px
        return cls(np.zeros((count, size, size), np.float32), np.zeros((count, size, size), np.float32),
                   np.zeros((count, size, size), np.float32), np.full(count, np.nan), np.full(count, np.nan),
                   np.full((count, rings), np.nan), np.arange(rings) / (geometry.grid_px * geometry.image_pixel_A),
                   np.full(count, np.nan), np.zeros(count, np.int64), [None] * count)

    def take(self, other: "EngineResult", rows: list[int]) -> None:
        """Copy `other`'s per-particle values for `rows` into this result."""
        for name in PER_PARTICLE:
            getattr(self, name)[rows] = getattr(other, name)[rows]


def select_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from simed_stream.errors import SimedError

        raise SimedError(f"device {device!r} asked for but CUDA is not available here")
    return torch.device(device)


class ConstraintTensors:
    """A batch's constraints as tensors on the full object grid, and on any coarser one."""

    NAMES = ("amplitude", "imposed", "free", "beyond", "lowres", "imposed_amplitude", "passed", "lowres_imposed",
             "lowres_target")

    def __init__(self, constraints: list[Constraints], geometry: Geometry, device: torch.device):
        def stack(name, dtype):
            return torch.as_tensor(np.stack([getattr(c, name) for c in constraints]), dtype=dtype, device=device)[:, None]

        n = geometry.grid_px
        t = dict(amplitude=stack("amplitude", torch.float32), imposed=stack("imposed", torch.bool),
                 free=stack("free", torch.bool), beyond=stack("beyond", torch.bool),
                 lowres=stack("lowres", torch.complex64), outer=stack("support", torch.bool))
        t["imposed_amplitude"] = t["amplitude"] * t["imposed"]
        t["passed"] = (~(t["imposed"] | t["beyond"])).float()  # free pixels and the direct beam float
        k = torch.as_tensor(np.hypot(np.fft.fftfreq(n, geometry.image_pixel_A)[:, None],
                                     np.fft.rfftfreq(n, geometry.image_pixel_A)[None, :]), device=device)
        lowband = k <= geometry.cutoff_lr_mrad * 1e-3 / geometry.wavelength_A
        t["lowband"] = lowband
        t["lowres_imposed"] = lowband & t["imposed"]
        t["lowres_phase"] = t["lowres"] / t["lowres"].abs().clamp_min(1e-12)
        t["lowres_target"] = t["amplitude"] * t["lowres_phase"]
        t["k2"] = (k * geometry.box_A) ** 2  # |k|² in Fourier pixels²
        self.full, self.grid_px = t, n

    def level(self, grid_px: int) -> dict:
        """The constraints on a grid of `grid_px` over the same box: the spectrum cropped to what
        it holds, amplitudes rescaled for the unnormalised DFT."""
        if grid_px == self.grid_px:
            return self.full
        t = {name: it.crop_spectrum(self.full[name], grid_px) for name in self.NAMES + ("k2",)}
        scale = (grid_px / self.grid_px) ** 2
        for name in ("amplitude", "imposed_amplitude", "lowres", "lowres_target"):
            t[name] = t[name] * scale
        t["outer"] = it.resample_mask(self.full["outer"], grid_px)
        return t


class PhaseRetrievalEngine:
    """Phase batches of particles: `engine(diffractions, images_lr)` → `EngineResult`."""

    def __init__(self, geometry: Geometry, settings: EngineSettings = EngineSettings(), device="auto"):
        self.geometry = geometry
        self.settings = settings
        self.device = select_device(device)
        n = geometry.grid_px
        self._rings = np.rint(np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]) * n).astype(np.int64)

    def __call__(self, diffractions, images_lr) -> EngineResult:
        made = [constraints_for(d, l, self.geometry, self.settings) for d, l in zip(diffractions, images_lr)]
        result = EngineResult.empty(len(made), self.geometry, int(self._rings.max()) + 1)
        result.flags = [flag for _, flag in made]
        todo = [i for i, (c, _) in enumerate(made) if c is not None]
        for attempt in range(self.settings.retries + 1):
            if not todo:
                break
            found = EngineResult.empty(len(made), self.geometry, result.prtf.shape[1])
            self._search([made[i][0] for i in todo], todo, found, attempt)
            # a later search from new starts replaces an earlier one only if it fits the held-out data better
            better = [i for i in todo if attempt == 0 or found.r_free[i] < result.r_free[i]]
            result.take(found, better)
            result.searches[todo] += 1
            todo = [i for i in todo if not result.resolution_A[i] <= self.settings.retry_above_A]
        return result

    def _starts(self, constraints: list[Constraints], t: dict, attempt: int) -> torch.Tensor:
        """Initial objects: measured amplitudes with the low-res phases inside the low-res band and
        random phases beyond (drawn from the particle's own seed), inside the outer support."""
        shape = (self.settings.starts,) + constraints[0].amplitude.shape
        phases = np.stack([np.random.default_rng([c.seed, attempt]).uniform(0, 2 * np.pi, shape) for c in constraints])
        angle = torch.as_tensor(phases, dtype=torch.float32, device=self.device)
        phase = torch.where(t["lowband"], t["lowres_phase"], torch.polar(torch.ones_like(angle), angle))
        spectrum = torch.where(t["imposed"] | t["free"], t["amplitude"] * phase, t["lowres"])
        v = torch.fft.irfft2(spectrum, s=(self.geometry.grid_px,) * 2)
        return torch.where(t["outer"], v, torch.zeros((), device=self.device))

    def _search(self, constraints: list[Constraints], indices: list[int], result: EngineResult, attempt: int) -> None:
        settings, n = self.settings, self.geometry.grid_px
        tensors = ConstraintTensors(constraints, self.geometry, self.device)
        v = self._starts(constraints, tensors.full, attempt)  # (P, S, n, n)
        support = tensors.full["outer"].expand_as(v).clone()
        done, grid = 0, n
        for index, (coarsening, stage) in enumerate(settings.schedule):
            if n // coarsening != grid:
                grid = n // coarsening
                v, support = it.resample_real(v, grid), it.resample_mask(support, grid)
            t = tensors.level(grid)
            for _ in range(stage):
                v, support = self._hio(v, support, t, done)
                done += 1
            if index < len(settings.schedule) - 1 and v.shape[1] > settings.keep:
                order = torch.argsort(it.r_factors(it.solution(v, support), t)[0], dim=1)
                order = order[:, : max(settings.keep, v.shape[1] // 2)]
                v, support = (torch.take_along_dim(x, order[:, :, None, None], dim=1) for x in (v, support))
        if grid != n:
            v, support = it.resample_real(v, n), it.resample_mask(support, n)
        for _ in range(settings.er_iterations):
            v = it.er_step(v, support, tensors.full)
        estimate = it.solution(v, support)
        r_free, r_work = it.r_factors(estimate, tensors.full)
        order = torch.argsort(r_free if settings.free_fraction > 0 else r_work, dim=1)[:, : settings.keep]
        aligned = align_to_best(torch.take_along_dim(estimate, order[:, :, None, None], dim=1))
        best = order[:, :1]
        self._finish(constraints, indices, aligned, torch.take_along_dim(r_free, best, 1)[:, 0],
                     torch.take_along_dim(r_work, best, 1)[:, 0], tensors.full, result)

    def _hio(self, v, support, t: dict, iteration: int):
        """One HIO step of the schedule (with its low-res pull and, every so often, shrink-wrap)."""
        s = self.settings
        weight = s.lowres_weight * max(0.0, 1.0 - iteration / s.lowres_iterations) if s.lowres_iterations else 0.0
        v = it.hio_step(v, support, t, s.beta, weight)
        if s.shrinkwrap_every and iteration % s.shrinkwrap_every == s.shrinkwrap_every - 1:
            fraction = iteration / max(s.hio_iterations - 1, 1)
            sigma = s.shrinkwrap_sigma_px[0] + fraction * (s.shrinkwrap_sigma_px[1] - s.shrinkwrap_sigma_px[0])
            support = it.shrinkwrap(v, t, sigma * v.shape[-1] / self.geometry.grid_px, s.shrinkwrap_threshold)
        return v, support

    def _finish(self, constraints, indices, aligned, r_free, r_work, t, result: EngineResult) -> None:
        """PRTF and its crossing; the mean, the best and the spread aligned to the low-res estimate."""
        size = self.geometry.image_size_px
        weights = (t["amplitude"][:, 0] * (t["imposed"] | t["free"])[:, 0]).cpu().numpy().astype(np.float64)
        coherence = phasor_coherence(aligned)
        mean = aligned.mean(dim=1).cpu().numpy().astype(np.float64)
        best = aligned[:, 0].cpu().numpy().astype(np.float64)
        spread = aligned.std(dim=1).cpu().numpy() if aligned.shape[1] > 1 else np.zeros_like(mean)
        for row, (c, index) in enumerate(zip(constraints, indices)):
            result.prtf[index] = ring_average(coherence[row], weights[row], self._rings, result.prtf.shape[1])
            result.resolution_A[index] = crossing_A(result.prtf[index], result.prtf_frequency_inv_A)
            twin, shift = find_origin_and_hand(mean[row], c.wiener, self.geometry)
            for name, image in (("sigma_v", mean[row]), ("best", best[row]), ("spread", spread[row])):
                getattr(result, name)[index] = crop_center(apply_origin_and_hand(image, twin, shift), size)
            result.r_free[index], result.r_work[index] = float(r_free[row]), float(r_work[row])
