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

import h5py
import numpy as np

from simed_stream.errors import SimedError
from simed_stream.localise import PickSettings, find_particles, score_picks
from simed_stream.particles import Particle, ScanCalibration, check_overview, fill_particle, match_particles
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
    uncertainty_passes: int = 1  # >1: classical runs from random starts → mean image and an uncertainty


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
    accounting: dict | None = None  # the capture's frame accounting (received, missing, ...)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


class SeriesChain:
    """One series' particles, stage by stage; live and offline drive the same object.

    Built when the overview is in (picks and scan matching happen at once); `offer` a scan
    position's data as it becomes available and get back the particles it made ready; `phase`
    batches of ready particles (classical + network, then stack and STAR); `finish` flags what
    never got its data and writes the report."""

    def __init__(self, phaser: ParticlePhaser, settings: ChainSettings, series_id: str, out_dir: Path,
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
        self.result.seconds.update(pick=time.perf_counter() - t, prepare=0.0, classical=0.0, network=0.0, write=0.0)
        self.result.picks = len(self.particles)
        nx = calibration.nav_shape[1]
        self.waiting: dict[int, list[Particle]] = {}
        for particle in self.particles:
            if particle.flag is None:
                self.waiting.setdefault(particle.scan_yx[0] * nx + particle.scan_yx[1], []).append(particle)
        self.phased: list[tuple[Particle, np.ndarray, float]] = []
        optics = Optics(geometry.image_pixel_A, geometry.image_size_px, settings.voltage_kV,
                        micrograph_pixel_size_A=calibration.overview_pixel_A)
        self.writer = StackWriter(out_dir, optics)

    def positions_needed(self) -> list[int]:
        return sorted(self.waiting)

    def offer(self, position: int, position_data) -> list[Particle]:
        """A position's (sum, frames counted, beam centre, valid); returns the particles now ready."""
        particles = self.waiting.pop(position, [])
        t = time.perf_counter()
        for particle in particles:
            fill_particle(particle, position_data, self.overview, self.calibration, self.phaser.geometry,
                          self.bad_pixels, self.settings.min_coverage)
        self.result.seconds["prepare"] += time.perf_counter() - t
        return [p for p in particles if p.flag is None]

    def phase(self, batch: list[Particle]) -> None:
        if not batch:
            return
        phased = self.phaser(np.stack([p.diffraction for p in batch]), np.stack([p.image_lr for p in batch]))
        self.result.seconds["classical"] += phased.seconds_classical
        self.result.seconds["network"] += phased.seconds_network
        t = time.perf_counter()
        rows = [self._row(p, r) for p, r in zip(batch, phased.fourier_r)]
        if phased.uncertainty is not None:
            for row, value in zip(rows, phased.uncertainty):
                row["uncertainty"] = float(value)
        self.writer.write_batch(phased.sigma_v, rows)
        self.result.seconds["write"] += time.perf_counter() - t
        self.phased.extend(zip(batch, phased.sigma_v, phased.fourier_r.tolist()))
        self.result.phased += len(batch)

    def finish(self, notes: list[str] = (), accounting: dict | None = None) -> SeriesResult:
        """Flag particles whose positions never came; report. Call after the last `phase`."""
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
        t = time.perf_counter()
        good = [p for p, _, _ in self.phased]
        images = [image for _, image, _ in self.phased]
        if self.truth is not None:
            self._score_against_truth(good, images)
        from simed_stream.report import write_series_report

        write_series_report(result.out_dir, result, self.overview, self.particles, self.phased, self.truth)
        result.seconds["report"] = time.perf_counter() - t
        write_result(result.out_dir, result)
        return result

    def _row(self, p: Particle, fourier_r: float) -> dict:
        return {"micrograph": self.result.series_id, "x_px": p.yx_overview_px[1], "y_px": p.yx_overview_px[0],
                "scan_y": p.scan_yx[0], "scan_x": p.scan_yx[1], "coverage": p.coverage, "pick_score": p.score,
                "fourier_r": fourier_r, "model_sha256": self.phaser.phaser.sha256}

    def _score_against_truth(self, good: list[Particle], phased_images: list[np.ndarray]) -> None:
        pick_score, frc05 = score_against_truth(
            self.picks.yx_px, [p.yx_overview_px for p in good], phased_images, self.truth,
            self.settings.picking.diameter_A / self.calibration.overview_pixel_A, self.phaser.phaser.target,
            self.phaser.geometry.image_pixel_A)
        self.result.pick_score, self.result.frc05_A_vs_truth = pick_score, frc05


def score_against_truth(picks_yx, phased_yx, phased_images, truth: dict, diameter_px: float, target_kind: str,
                        pixel_A: float) -> tuple[dict, dict | None]:
    """Picking (one-to-one within a radius of half a diameter) and FRC₀.₅ of each phased particle
    against its true target — only for simulated scans, which carry the truth."""
    from simed_stream.metrics import frc
    from simed_stream.phasing.preprocess import SIGMA_200KV

    radius_px = 0.5 * diameter_px
    pick_score = score_picks(np.asarray(picks_yx), truth["yx_overview_px"], radius_px).as_dict()
    if not len(phased_yx):
        return pick_score, None
    match = score_picks(np.asarray(phased_yx), truth["yx_overview_px"], radius_px).matched
    values = []
    for pick_index, truth_index in match:
        target = truth["potential"][truth_index] * SIGMA_200KV if target_kind == "potential" \
            else truth["image_hr"][truth_index]
        # the crop is centred on the pick, the truth on the particle: undo the picking error
        # (whole pixels, as the crop was cut) so the FRC measures phasing, not picking
        offset = np.rint(phased_yx[pick_index]).astype(int) - np.rint(truth["yx_overview_px"][truth_index]).astype(int)
        aligned = np.roll(phased_images[pick_index], tuple(offset), axis=(0, 1))
        values.append(frc(aligned, target, pixel_A).resolution_A(0.5))
    return pick_score, {"mean": float(np.nanmean(values)) if values else None,
                        "median": float(np.nanmedian(values)) if values else None, "particles": len(values)}


def score_series_dir(series_dir: Path, truth: dict, diameter_A: float, overview_pixel_A: float, target_kind: str,
                     pixel_A: float) -> tuple[dict, dict | None]:
    """`score_against_truth` on a written series folder (picks.json + stack): how the demo scores
    what the live path produced against the simulated scan's truth."""
    from simed_stream.stack import read_stack

    picks = json.loads((series_dir / "picks.json").read_text())
    picks_yx = np.array([[p["y_px"], p["x_px"]] for p in picks]).reshape(-1, 2)
    if not (series_dir / "particles.star").exists():
        return score_against_truth(picks_yx, [], [], truth, diameter_A / overview_pixel_A, target_kind, pixel_A)
    star, images = read_stack(series_dir)
    table = star["particles"]
    phased_yx = np.stack([table["rlnCoordinateY"].to_numpy(float), table["rlnCoordinateX"].to_numpy(float)], axis=1)
    return score_against_truth(picks_yx, phased_yx, list(images), truth, diameter_A / overview_pixel_A, target_kind,
                               pixel_A)


class SeriesProcessor:
    """The whole chain at once, for a series whose data are all in (a capture)."""

    def __init__(self, phaser: ParticlePhaser, settings: ChainSettings):
        self.phaser = phaser
        self.settings = settings

    def run(self, series_id: str, out_dir: Path, overview: np.ndarray, calibration: ScanCalibration,
            positions, bad_pixels: np.ndarray | None, truth: dict | None = None,
            accounting: dict | None = None, notes: list[str] = ()) -> SeriesResult:
        chain = SeriesChain(self.phaser, self.settings, series_id, out_dir, overview, calibration, bad_pixels, truth)
        ready = []
        for position in chain.positions_needed():
            ready.extend(chain.offer(position, positions(position)))
        for first in range(0, len(ready), self.settings.batch_size):
            chain.phase(ready[first : first + self.settings.batch_size])
        return chain.finish(notes, accounting)


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
                    f"{int((reader.frame_status == 1).sum())} captured frames kept in {path}"],
                    accounting=reader.accounting)
                write_result(out_dir, result)
                return result
            # the first overview sent (lowest msg_seq), as the live path uses the first to arrive
            overview_ds = min(overviews, key=lambda d: json.loads(d.attrs["header"]).get("msg_seq", 0))
            overview = overview_ds[:].astype(np.float64)
            calibration = ScanCalibration.from_headers(reader.series_start, json.loads(overview_ds.attrs["header"]))
            sums, counts = f["positions/sum"], f["positions/frame_count"][:]
            centres, valid = f["positions/beam_centre_yx"][:], f["positions/valid"][:]
            bad = f["pixel_mask"][:].astype(bool) if "pixel_mask" in f else None

            def positions(index: int):
                return sums[index], int(counts[index]), centres[index], bool(valid[index])

            return processor.run(series_id, out_dir, overview, calibration, positions, bad, read_truth(f),
                                 reader.accounting, notes)  # finish() writes result.json
        except (OSError, KeyError) as error:
            raise SimedError(f"{path} is damaged or truncated: {error}") from None


def write_result(out_dir: Path, result: SeriesResult) -> None:
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
    import torch

    out_dir = out_root / Path(capture).stem
    threads = torch.get_num_threads()
    # one thread: the same arithmetic (and so the same stack, bit for bit) on a laptop, in a
    # Dask worker or here; the classical runs, not the network, dominate the cost
    torch.set_num_threads(1)
    try:
        if not Path(capture).is_file():
            raise SimedError(f"capture {capture} does not exist")
        processor = SeriesProcessor(ParticlePhaser(model_path, device, passes=settings.uncertainty_passes), settings)
        return reprocess_capture(Path(capture), out_dir, processor)
    except Exception as error:  # one capture's problem must not stop the others (or a Dask gather)
        if not isinstance(error, SimedError):
            log.exception("%s: unexpected failure", capture)
        else:
            log.error("%s: %s", capture, error)
        result = SeriesResult(Path(capture).stem, out_dir, f"failed: {error}")
        write_result(out_dir, result)
        return result
    finally:
        torch.set_num_threads(threads)


def reprocess_captures(captures: list[Path], out_root: Path, model_path: Path, settings: ChainSettings,
                       device: str = "auto", scheduler: str | None = None, workers: int = 2) -> list[SeriesResult]:
    """Every capture into `out_root/<capture stem>/`, in order.

    scheduler: None runs them here one after the other; "local" starts a local Dask cluster of
    `workers` single-threaded processes; any other value is the address of a running Dask
    scheduler (`tcp://host:8786`), which is how a user outgrows one machine. The results are
    the same whichever runs them: each capture is one independent, deterministic task."""
    check_writable(out_root)
    ParticlePhaser(model_path, device)  # a bad model fails once, before any capture is touched
    stems = [Path(c).stem for c in captures]
    if len(set(stems)) != len(stems):
        raise SimedError("two captures share a file name; their output folders would collide")
    if scheduler is None:
        return [reprocess_one(Path(c), out_root, model_path, settings, device) for c in captures]
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SimedError("the Dask scheduler needs `dask[distributed]` (a project dependency): reinstall") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    else:
        try:
            client, cluster = Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as error:
            raise SimedError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    try:
        futures = [client.submit(_reprocess_task, str(c), str(out_root), str(model_path), settings, device,
                                 pure=False) for c in captures]
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _reprocess_task(capture: str, out_root: str, model_path: str, settings: ChainSettings, device: str) -> SeriesResult:
    """One capture on a Dask worker."""
    return reprocess_one(Path(capture), Path(out_root), Path(model_path), settings, device)
