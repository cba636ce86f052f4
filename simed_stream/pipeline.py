"""The particle chain, shared by `simed reprocess` (captures on disk) and the live path.

Stages, each timed: pick (overview) → prepare (scan matching, centred diffraction, low-res crop,
flags) → phase (classical + network, in batches) → write (stack + STAR after every batch) →
report. `SeriesProcessor` runs them for one series given its overview and a way to read a
position's summed frame; `reprocess_capture` feeds it from a capture file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from simed_stream.errors import SimedError
from simed_stream.localise import PickSettings, find_particles, score_picks
from simed_stream.particles import Particle, ScanCalibration, check_overview, prepare_particles
from simed_stream.phasing.inference import ParticlePhaser
from simed_stream.stack import Optics, StackWriter

log = logging.getLogger(__name__)
NO_OVERVIEW = "not phased: no overview"


@dataclass
class ChainSettings:
    picking: PickSettings = field(default_factory=PickSettings)
    min_coverage: float = 1.0  # of a position's expected frames; below: flagged, not phased
    batch_size: int = 16
    voltage_kV: float = 200.0


@dataclass
class SeriesResult:
    series_id: str
    out_dir: Path
    status: str  # "phased", NO_OVERVIEW, …
    picks: int = 0
    phased: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pick_score: dict | None = None
    frc05_A_vs_truth: dict | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


class SeriesProcessor:
    """Picks, prepares, phases and writes one series' particles into `out_dir`."""

    def __init__(self, phaser: ParticlePhaser, settings: ChainSettings, progress: Callable[[dict], None] | None = None):
        self.phaser = phaser
        self.settings = settings
        self.progress = progress

    def run(self, series_id: str, out_dir: Path, overview: np.ndarray, calibration: ScanCalibration,
            positions, bad_pixels: np.ndarray | None, truth: dict | None = None) -> SeriesResult:
        result = SeriesResult(series_id, out_dir, "phased")
        geometry = self.phaser.geometry
        calibration.check_model(geometry)
        check_overview(overview, calibration)
        t = time.perf_counter()
        picks = find_particles(overview, calibration.overview_pixel_A, self.settings.picking)
        result.seconds["pick"] = time.perf_counter() - t
        result.picks = len(picks.score)
        t = time.perf_counter()
        particles = prepare_particles(picks.yx_px, picks.score, overview, calibration, geometry, positions,
                                      bad_pixels, self.settings.min_coverage)
        result.seconds["prepare"] = time.perf_counter() - t
        for p in particles:
            if p.flag:
                result.flagged[p.flag] = result.flagged.get(p.flag, 0) + 1
        good = [p for p in particles if p.flag is None]
        optics = Optics(geometry.image_pixel_A, geometry.image_size_px, self.settings.voltage_kV,
                        micrograph_pixel_size_A=calibration.overview_pixel_A)
        phased_images: list[np.ndarray] = []
        fourier_r: list[float] = []
        result.seconds.update(classical=0.0, network=0.0, write=0.0)
        out_dir.mkdir(parents=True, exist_ok=True)
        with StackWriter(out_dir, optics) as writer:
            for first in range(0, len(good), self.settings.batch_size):
                batch = good[first : first + self.settings.batch_size]
                phased = self.phaser(np.stack([p.diffraction for p in batch]), np.stack([p.image_lr for p in batch]))
                result.seconds["classical"] += phased.seconds_classical
                result.seconds["network"] += phased.seconds_network
                t = time.perf_counter()
                writer.write_batch(phased.sigma_v, [self._row(series_id, p, r) for p, r in zip(batch, phased.fourier_r)])
                result.seconds["write"] += time.perf_counter() - t
                phased_images.extend(phased.sigma_v)
                fourier_r.extend(phased.fourier_r.tolist())
                result.phased += len(batch)
                if self.progress:
                    self.progress({"series_id": series_id, "phased": result.phased, "to_phase": len(good)})
        t = time.perf_counter()
        if truth is not None:
            self._score_against_truth(result, picks, good, phased_images, truth, calibration)
        from simed_stream.report import write_series_report

        write_series_report(out_dir, result, overview, particles, phased_images, fourier_r, truth)
        result.seconds["report"] = time.perf_counter() - t
        return result

    def _row(self, series_id: str, p: Particle, fourier_r: float) -> dict:
        return {"micrograph": series_id, "x_px": p.yx_overview_px[1], "y_px": p.yx_overview_px[0],
                "scan_y": p.scan_yx[0], "scan_x": p.scan_yx[1], "coverage": p.coverage, "pick_score": p.score,
                "fourier_r": fourier_r, "model_sha256": self.phaser.phaser.sha256}

    def _score_against_truth(self, result, picks, good, phased_images, truth, calibration) -> None:
        from simed_stream.metrics import frc
        from simed_stream.phasing.preprocess import SIGMA_200KV

        radius_px = 0.5 * self.settings.picking.diameter_A / calibration.overview_pixel_A
        result.pick_score = score_picks(picks.yx_px, truth["yx_overview_px"], radius_px).as_dict()
        if not good:
            return
        target_kind = self.phaser.phaser.target
        match = score_picks(np.array([p.yx_overview_px for p in good]), truth["yx_overview_px"], radius_px).matched
        values = []
        for pick_index, truth_index in match:
            target = truth["potential"][truth_index] * SIGMA_200KV if target_kind == "potential" \
                else truth["image_hr"][truth_index]
            # the crop is centred on the pick, the truth on the particle: undo the picking error
            # (whole pixels, as the crop was cut) so the FRC measures phasing, not picking
            offset = np.rint(good[pick_index].yx_overview_px).astype(int) - np.rint(truth["yx_overview_px"][truth_index]).astype(int)
            aligned = np.roll(phased_images[pick_index], tuple(offset), axis=(0, 1))
            values.append(frc(aligned, target, self.phaser.geometry.image_pixel_A).resolution_A(0.5))
        result.frc05_A_vs_truth = {"mean": float(np.nanmean(values)) if values else None,
                                   "median": float(np.nanmedian(values)) if values else None,
                                   "particles": len(values)}


# ------------------------------------------------------------------ offline: from a capture

def read_truth(f: h5py.File) -> dict | None:
    if "truth" not in f:
        return None
    g = f["truth"]
    return {"yx_overview_px": g["yx_overview_px"][:], "potential": g["potential"][:], "image_hr": g["image_hr"][:],
            "protein": [p.decode() if isinstance(p, bytes) else p for p in g["protein"][:]]}


def reprocess_capture(path: Path, out_dir: Path, processor: SeriesProcessor) -> SeriesResult:
    """One capture through the chain; the capture is only read, never changed."""
    import hdf5plugin  # noqa: F401  (decodes the Blosc-compressed sums)

    from simed_stream.capture import CaptureReader

    try:
        reader = CaptureReader(path)
    except (ValueError, OSError) as error:
        raise SimedError(f"cannot reprocess {path}: {error} (a truncated or foreign file?)") from None
    with reader:
        f = reader.file
        series_id = str(f.attrs.get("series_id", path.stem))
        notes = []
        if f.attrs.get("state") != "closed":
            notes.append("the capture was not closed by its receiver: using what it flushed")
        try:
            overviews = list(f["overviews"].values()) if "overviews" in f else []
            if not overviews:
                result = SeriesResult(series_id, out_dir, NO_OVERVIEW, notes=notes + [
                    f"{int((reader.frame_status == 1).sum())} captured frames kept in {path}"])
                _write_result(out_dir, result)
                return result
            overview_ds = overviews[-1]
            overview = overview_ds[:].astype(np.float64)
            calibration = ScanCalibration.from_headers(reader.series_start, json.loads(overview_ds.attrs["header"]))
            sums, counts = f["positions/sum"], f["positions/frame_count"][:]
            centres, valid = f["positions/beam_centre_yx"][:], f["positions/valid"][:]
            bad = f["pixel_mask"][:].astype(bool) if "pixel_mask" in f else None

            def positions(index: int):
                return sums[index], int(counts[index]), centres[index], bool(valid[index])

            result = processor.run(series_id, out_dir, overview, calibration, positions, bad, read_truth(f))
        except (OSError, KeyError) as error:
            raise SimedError(f"{path} is damaged or truncated: {error}") from None
    result.notes = notes + result.notes
    _write_result(out_dir, result)
    return result


def _write_result(out_dir: Path, result: SeriesResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=2))
    tmp.replace(path)


def check_writable(out_dir: Path) -> None:
    """Fail before any work if results cannot be written (rather than after phasing)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".simed-probe-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SimedError(f"cannot write to the output directory {out_dir}: {error.strerror or error}") from None


def reprocess_one(capture: Path, out_root: Path, model_path: Path, settings: ChainSettings,
                  device: str = "auto") -> SeriesResult:
    """One capture into `out_root/<capture stem>/`; a bad capture gives a failed result, not an exception."""
    out_dir = out_root / Path(capture).stem
    try:
        if not Path(capture).is_file():
            raise SimedError(f"capture {capture} does not exist")
        processor = SeriesProcessor(ParticlePhaser(model_path, device), settings)
        return reprocess_capture(Path(capture), out_dir, processor)
    except SimedError as error:
        log.error("%s: %s", capture, error)
        result = SeriesResult(Path(capture).stem, out_dir, f"failed: {error}")
        _write_result(out_dir, result)
        return result


def reprocess_captures(captures: list[Path], out_root: Path, model_path: Path, settings: ChainSettings,
                       device: str = "auto") -> list[SeriesResult]:
    check_writable(out_root)
    ParticlePhaser(model_path, device)  # a bad model fails once, before any capture is touched
    stems = [Path(c).stem for c in captures]
    if len(set(stems)) != len(stems):
        raise SimedError("two captures share a file name; their output folders would collide")
    return [reprocess_one(Path(c), out_root, model_path, settings, device) for c in captures]
