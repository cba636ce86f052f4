"""The particle chain of one series, shared by `simed reprocess` (`reprocess.py`, a capture on
disk) and `simed run` (`live/`, a stream).

Stages, each timed: pick (overview) → prepare (scan matching, centred diffraction, low-res crop,
flags) → phase (engine + network, in batches) → write (stack + STAR after every batch) →
report. `SeriesChain` holds them for one series: built when its overview is in, offered each
scan position's `PositionSum` as it comes, asked to phase batches of ready particles, finished
once. Its `SeriesResult` is written (`result.json`) once, by whoever drives the chain.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from simed_stream.chain_settings import ChainSettings
from simed_stream.files import write_text_atomically
from simed_stream.localise import find_particles
from simed_stream.particles import ScanCalibration, check_overview, fill_particle, match_particles
from simed_stream.phasing.inference import Phaser
from simed_stream.records import Particle, PhasedParticle, PositionSum
from simed_stream.stack import Optics, StackWriter

NO_OVERVIEW = "not phased: no overview"


@dataclass
class SeriesResult:
    series_id: str
    out_dir: Path
    status: str  # "phased", NO_OVERVIEW, "failed: …"
    picks: int = 0
    phased: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pick_score: dict | None = None
    frc05_A_vs_truth: dict | None = None
    notes: list[str] = field(default_factory=list)
    accounting: dict | None = None  # the capture's frame accounting (received, missing, ...)
    resolution_estimate_A: dict | None = None  # PRTF estimates of the phased particles: median, min, max

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d

    def write(self) -> None:
        """`out_dir/result.json`, replaced atomically: the series' last word, written once."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.out_dir / "result.json", json.dumps(self.as_dict(), indent=2))


class SeriesChain:
    """One series' particles, stage by stage; live and offline drive the same object.

    Built when the overview is in (picks and scan matching happen at once); `offer` a scan
    position's sum as it becomes available and get back the particles it made ready; `phase`
    batches of ready particles (engine + network, then stack and STAR); `finish` flags what
    never got its data and writes the report."""

    def __init__(self, phaser: Phaser, settings: ChainSettings, series_id: str, out_dir: Path,
                 overview: np.ndarray, calibration: ScanCalibration, bad_pixels: np.ndarray | None,
                 truth: dict | None = None):
        self.phaser, self.settings = phaser, settings
        self.overview, self.calibration, self.bad_pixels, self.truth = overview, calibration, bad_pixels, truth
        self.result = SeriesResult(series_id, out_dir, "phased")
        geometry = phaser.geometry
        calibration.check_model(geometry)
        check_overview(overview, calibration)
        t = time.perf_counter()
        self.picks = find_particles(overview, calibration.overview_pixel_A, settings.picking)
        self.particles = match_particles(self.picks.yx_px, self.picks.score, calibration)
        self.result.seconds.update(pick=time.perf_counter() - t, prepare=0.0, engine=0.0, network=0.0, write=0.0)
        self.result.picks = len(self.particles)
        nx = calibration.nav_shape[1]
        self.waiting: dict[int, list[Particle]] = {}  # scan position → its particles not yet prepared
        for particle in self.particles:
            if particle.flag is None:
                self.waiting.setdefault(particle.scan_yx[0] * nx + particle.scan_yx[1], []).append(particle)
        self.phased: list[PhasedParticle] = []
        optics = Optics(geometry.image_pixel_A, geometry.image_size_px, calibration.energy_eV / 1e3,
                        micrograph_pixel_size_A=calibration.overview_pixel_A)
        self.writer = StackWriter(out_dir, optics)

    def positions_needed(self) -> list[int]:
        return sorted(self.waiting)

    def offer(self, position: PositionSum) -> list[Particle]:
        """A scan position's sum; returns the particles it made ready to phase."""
        particles = self.waiting.pop(position.position, [])
        t = time.perf_counter()
        for particle in particles:
            fill_particle(particle, position, self.overview, self.calibration, self.phaser.geometry,
                          self.bad_pixels, self.settings.min_coverage)
        self.result.seconds["prepare"] += time.perf_counter() - t
        return [p for p in particles if p.flag is None]

    def phase(self, batch: list[Particle]) -> list[PhasedParticle]:
        """Phase a batch and write the phased ones; returns them (the others are flagged with the reason)."""
        if not batch:
            return []
        phased = self.phaser(np.stack([p.diffraction for p in batch]), np.stack([p.image_lr for p in batch]))
        self.result.seconds["engine"] += phased.seconds_engine
        self.result.seconds["network"] += phased.seconds_network
        t = time.perf_counter()
        done = []
        for i, particle in enumerate(batch):
            if phased.flags[i]:  # bad input: said on the particle, never a crash of the series
                particle.flag = f"not phased: {phased.flags[i]}"
                continue
            done.append(PhasedParticle(particle, phased.sigma_v[i], float(phased.fourier_r[i]),
                                       float(phased.r_free[i]), float(phased.resolution_A[i]),
                                       float(phased.uncertainty[i])))
        if done:
            self.writer.write_batch(np.stack([p.image for p in done]), [self._row(p) for p in done])
        self.result.seconds["write"] += time.perf_counter() - t
        self.phased.extend(done)
        self.result.phased += len(done)
        return done

    def finish(self, notes: list[str] = (), accounting: dict | None = None) -> SeriesResult:
        """Flag particles whose positions never came; score against the truth (simulated scans);
        write the report. Call after the last `phase`; the caller writes the result."""
        self.result.accounting = accounting
        for particles in self.waiting.values():
            for particle in particles:
                particle.flag = "its scan position was never received"
        self.waiting.clear()
        self.writer.close()
        result = self.result
        result.notes.extend(notes)
        for particle in self.particles:
            if particle.flag:
                result.flagged[particle.flag] = result.flagged.get(particle.flag, 0) + 1
        estimates = [p.resolution_A for p in self.phased if np.isfinite(p.resolution_A)]
        if estimates:
            result.resolution_estimate_A = {"median": float(np.median(estimates)), "min": float(min(estimates)),
                                            "max": float(max(estimates))}
        t = time.perf_counter()
        if self.truth is not None:
            from simed_stream.truth import score_against_truth

            result.pick_score, result.frc05_A_vs_truth = score_against_truth(
                self.picks.yx_px, self.phased, self.truth,
                self.settings.picking.diameter_A / self.calibration.overview_pixel_A, self.phaser.geometry.image_pixel_A)
        from simed_stream.report import write_series_report

        write_series_report(result.out_dir, result, self.overview, self.particles, self.phased, self.truth)
        result.seconds["report"] = time.perf_counter() - t
        return result

    def _row(self, phased: PhasedParticle) -> dict:
        p = phased.particle
        row = {"micrograph": self.result.series_id, "x_px": p.yx_overview_px[1], "y_px": p.yx_overview_px[0],
               "scan_y": p.scan_yx[0], "scan_x": p.scan_yx[1], "coverage": p.coverage, "pick_score": p.score,
               "fourier_r": phased.fourier_r, "r_free": phased.r_free, "resolution_estimate_A": phased.resolution_A,
               "uncertainty": phased.uncertainty, "model_sha256": self.phaser.sha256}
        return row
