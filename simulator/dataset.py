"""`simed simulate dataset`: training triplets for many structures and orientations in HDF5.

Samples are laid out protein-major (sample = protein_index * orientations + orientation_index).
Every random draw comes from a seed sequence keyed by (seed, protein index, orientation index),
so a sample's content does not depend on which worker made it or in which order; the same
arguments give the same file contents, and an interrupted run resumes where it stopped.
Bit for bit across processes and runs on one machine, because every process uses the machine's
shared FFT plans (`simulator.fft_plans`) and noise is drawn by inverting the Poisson CDF, one
uniform per pixel (`simulator.physics.poisson_counts`), which float rounding cannot shift.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

import simed_stream
from simed_stream.errors import SimedError
from simulator.config import SimulationConfig
from simulator.orientations import uniform_quaternions
from simulator.physics import IMAGE_KINDS, OrientationResult, cell_height_A, check_fits
from simulator.structure import PreparedStructure, load_structure

log = logging.getLogger(__name__)

FORMAT = "simed-triplets/1"
DEFOCUS_CONVENTION = (
    "abTEM: defocus = -C10, positive = underfocus; values are at the molecule centre, which lies "
    "cell_height/2 above abTEM's reference plane (the exit plane); abTEM was given defocus + cell_height/2"
)
_ORIENTATION_STREAM, _DEFOCUS_STREAM, _NOISE_STREAM = 0, 1, 2
# How counts are drawn from a sample's noise stream: part of the fingerprint, so a file begun
# with another sampler is not resumed with this one.
NOISE_SAMPLER = "poisson inverse CDF, one uniform per pixel; diffraction and image from spawned streams 0 and 1"
_COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True, track_times=False)


@dataclass(frozen=True)
class DatasetRequest:
    structure_paths: list[Path]
    orientations: int
    seed: int
    out: Path
    config: SimulationConfig
    workers: int = 1
    cache_dir: Path | None = None  # prepared structures (default $SIMED_CACHE_DIR/structures)
    plan_dir: Path | None = None  # FFT plans (default $SIMED_CACHE_DIR/fftw)
    progress: bool = True


@dataclass
class _Plan:
    structures: list[PreparedStructure]
    quaternions: np.ndarray  # (N, 4)
    defocus_lr_A: np.ndarray  # (N,)
    protein_id: np.ndarray  # (N,)
    fingerprint: str = field(default="")


def plan_dataset(request: DatasetRequest) -> _Plan:
    if request.orientations < 1:
        raise SimedError(f"--orientations must be at least 1, got {request.orientations}")
    if not request.structure_paths:
        raise SimedError("give at least one structure with --pdb")
    structures = [load_structure(path, request.config.structure, request.cache_dir) for path in request.structure_paths]
    for structure in structures:
        check_fits(structure, request.config)
    lr = request.config.image_lr
    quaternions, defocus, protein_id = [], [], []
    for index, _ in enumerate(structures):
        quaternions.append(uniform_quaternions(request.orientations, _rng(request.seed, index, _ORIENTATION_STREAM)))
        if lr.defocus_range_A is None:
            defocus.append(np.full(request.orientations, lr.defocus_A))
        else:
            defocus.append(_rng(request.seed, index, _DEFOCUS_STREAM).uniform(*lr.defocus_range_A, request.orientations))
        protein_id.append(np.full(request.orientations, index, dtype=np.int32))
    identity = {
        "format": FORMAT,
        "config": request.config.model_dump(mode="json"),
        "seed": request.seed,
        "orientations": request.orientations,
        "structures": [(s.name, s.source_sha256, s.chain) for s in structures],
        "noise": NOISE_SAMPLER,
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return _Plan(structures, np.concatenate(quaternions), np.concatenate(defocus), np.concatenate(protein_id), fingerprint)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def simulate_dataset(request: DatasetRequest) -> Path:
    """Simulate every sample not yet in `request.out`; returns the output path."""
    plan = plan_dataset(request)
    todo = _open_or_create(request, plan)
    total = len(plan.protein_id)
    if not todo:
        log.info("%s already holds all %d samples", request.out, total)
        return request.out
    log.info("simulating %d of %d samples with %d worker(s)", len(todo), total, request.workers)
    tasks = [_task(request, plan, index) for index in todo]
    with h5py.File(request.out, "r+") as out:
        _run(tasks, request, plan, out)
    return request.out


def _task(request: DatasetRequest, plan: _Plan, index: int) -> tuple:
    protein = int(plan.protein_id[index])
    orientation = index - protein * request.orientations
    return (index, protein, plan.quaternions[index], float(plan.defocus_lr_A[index]),
            (request.seed, protein, orientation, _NOISE_STREAM))


def _run(tasks: list[tuple], request: DatasetRequest, plan: _Plan, out: h5py.File) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="orientation", disable=None if request.progress else True, desc=request.out.name)
    last_flush = time.monotonic()
    try:
        if request.workers <= 1:
            _init_worker(request.config, plan.structures, request.plan_dir)
            results = map(_work, tasks)
            _drain(results, out, bar, last_flush)
        else:
            context = multiprocessing.get_context("spawn")  # abTEM/numba state is not fork-safe
            with ProcessPoolExecutor(request.workers, mp_context=context, initializer=_init_worker,
                                     initargs=(request.config, plan.structures, request.plan_dir)) as pool:
                _drain(pool.map(_work, tasks), out, bar, last_flush)
    except KeyboardInterrupt:
        out.flush()
        raise SimedError(f"interrupted; finished samples are kept in {request.out}; rerun the same command to resume")
    except BrokenProcessPool:
        out.flush()
        raise SimedError(
            f"a worker process died (out of memory?); finished samples are kept in {request.out}; "
            "rerun the same command, perhaps with fewer --workers, to resume"
        ) from None
    finally:
        bar.close()


def _drain(results, out: h5py.File, bar, last_flush: float) -> None:
    for index, result in results:
        _write_sample(out, index, result)
        bar.update()
        if time.monotonic() - last_flush > 5.0:
            out.flush()
            last_flush = time.monotonic()
    out.flush()


def _write_sample(out: h5py.File, index: int, result: OrientationResult) -> None:
    if "diffraction" not in out:  # its size is abTEM's to choose: made from the first pattern
        side = result.diffraction.shape[-1]
        out.create_dataset("diffraction", (len(out["done"]), side, side), np.float32, chunks=(1, side, side),
                           **_COMPRESSION)
    out["diffraction"][index] = result.diffraction
    for kind in IMAGE_KINDS:
        out[kind][index] = getattr(result, kind)
    out["dose_e_per_A2"][index] = result.dose_e_per_A2
    out["snr_measured"][index] = result.snr_measured
    out["done"][index] = True  # last, so a sample counts as done only once all of it is written


_WORKER: dict = {}


def _init_worker(config: SimulationConfig, structures: list[PreparedStructure], plan_dir: Path | None) -> None:
    from simulator.fft_plans import use_shared_plans
    from simulator.physics import configure_abtem

    configure_abtem()
    use_shared_plans(config, plan_dir)
    _WORKER.update(config=config, structures=structures)


def _work(task: tuple) -> tuple[int, OrientationResult]:
    from simulator.physics import simulate_orientation

    index, protein, quaternion, defocus_lr_A, noise_key = task
    rng = np.random.default_rng(np.random.SeedSequence(list(noise_key)))
    return index, simulate_orientation(_WORKER["structures"][protein], quaternion, _WORKER["config"], defocus_lr_A, rng)


def _open_or_create(request: DatasetRequest, plan: _Plan) -> list[int]:
    """Indices still to simulate; creates the file on a first run, checks it on a rerun."""
    out = request.out
    if out.exists():
        try:
            with h5py.File(out, "r") as f:
                if f.attrs.get("fingerprint") != plan.fingerprint:
                    raise SimedError(
                        f"{out} exists but was made with other settings, structures, seed or noise sampler; "
                        "remove it or choose another --out (nothing was changed)"
                    )
                return [int(i) for i in np.flatnonzero(~f["done"][:])]
        except OSError as error:
            raise SimedError(f"{out} exists but cannot be read as HDF5 ({error}); remove it to start over") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    _create(out, request, plan)
    return list(range(len(plan.protein_id)))


def _create(path: Path, request: DatasetRequest, plan: _Plan) -> None:
    config = request.config
    total = len(plan.protein_id)
    size = config.image_size_px
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w", track_order=True) as f:
        for kind in IMAGE_KINDS:
            f.create_dataset(kind, (total, size, size), np.float32, chunks=(1, size, size), **_COMPRESSION)
        f.create_dataset("protein_id", data=plan.protein_id, track_times=False)
        f.create_dataset("orientation", data=plan.quaternions, track_times=False)
        f.create_dataset("defocus_lr_A", data=plan.defocus_lr_A, track_times=False)
        f.create_dataset("dose_e_per_A2", (total,), np.float64, fillvalue=np.nan, track_times=False)
        f.create_dataset("snr_measured", (total,), np.float64, fillvalue=np.nan, track_times=False)
        f.create_dataset("done", (total,), bool, fillvalue=False, track_times=False)
        structures = plan.structures
        f.create_dataset("protein_name", data=[s.name for s in structures], dtype=h5py.string_dtype())
        f.create_dataset("protein_sha256", data=[s.source_sha256 for s in structures], dtype=h5py.string_dtype())
        f.create_dataset("protein_mass_kDa", data=[s.mass_kDa for s in structures])
        f.create_dataset("protein_radius_A", data=[s.radius_A for s in structures])
        f.create_dataset("protein_atoms", data=[len(s.atomic_numbers) for s in structures])
        f.create_dataset("protein_hydrogens_added", data=[s.hydrogens_added for s in structures])
        f.create_dataset("protein_cell_height_A", data=[cell_height_A(s, config) for s in structures])
        lr, hr = config.image_lr, config.image_hr
        f.attrs.update(
            format=FORMAT,
            fingerprint=plan.fingerprint,
            config_json=config.model_dump_json(),
            preset=config.preset,
            seed=request.seed,
            orientations_per_protein=request.orientations,
            simed_version=simed_stream.__version__,
            abtem_version=importlib.metadata.version("abtem"),
            energy_eV=config.energy_eV,
            wavelength_A=config.wavelength_A,
            box_A=config.box_A,
            gpts=config.gpts,
            sampling_A=config.sampling_A,
            slice_thickness_A=config.slice_thickness_A,
            parametrization=config.parametrization,
            projection="infinite (independent-atom model)",
            max_angle_mrad=config.max_angle_mrad,
            diffraction_mrad_per_px=config.diffraction_mrad_per_px,
            diffraction_inv_A_per_px=1.0 / config.box_A,
            diffraction_units="fraction of incident electrons per pixel; direct beam at the centre pixel",
            diffraction_dose_e_per_A2=np.nan if config.diffraction_dose_e_per_A2 is None else config.diffraction_dose_e_per_A2,
            image_field_A=config.image_field_A,
            image_size_px=config.image_size_px,
            image_pixel_A=config.image_pixel_A,
            defocus_convention=DEFOCUS_CONVENTION,
            defocus_hr_A=hr.defocus_A,
            Cs_hr_A=hr.Cs_A,
            semiangle_cutoff_hr_mrad=np.nan if hr.semiangle_cutoff_mrad is None else hr.semiangle_cutoff_mrad,
            defocus_lr_A=lr.defocus_A,
            defocus_range_lr_A=np.array(lr.defocus_range_A if lr.defocus_range_A else [lr.defocus_A] * 2),
            Cs_lr_A=lr.Cs_A,
            cutoff_lr_mrad=lr.cutoff_mrad,
            soft_edge_lr_mrad=lr.soft_edge_mrad,
            target_snr=lr.target_snr,
            snr_band_A=np.array(lr.snr_band_A),
            potential_units="projected potential, V·Å",
            noise_sampler=NOISE_SAMPLER,
        )
    tmp.replace(path)
