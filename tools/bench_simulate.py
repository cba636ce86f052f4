"""Benchmark `simed simulate dataset` against a bare abTEM loop doing the same physics.

Both run end to end on the same number of worker processes (start-up, imports and FFTW planning
included), on the same prepared structure and orientations, in the same run of this script.
The bare loop builds the potential slices once (as `simed` does; the lazy potential would
integrate them twice, for the multislice and the projection), runs the multislice, takes the diffraction pattern, two CTF
images and the projected potential, and keeps nothing; `simed` also resamples, adds noise,
measures the SNR and writes compressed HDF5. The last line printed is JSON.

`simed` runs twice per repeat, in a cache folder of its own: first without FFT plans (the first
run on a machine, which measures them as the bare loop does in every run), then with the plans
the first run kept (every later run). "simed" in the JSON is the later runs.

    python tools/bench_simulate.py [--orientations 48] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simulator import BUNDLED_DATA
from simulator.config import load_simulation_config
from simulator.orientations import rotate, uniform_quaternions
from simulator.physics import cell_height_A
from simulator.structure import load_structure

STRUCTURE = BUNDLED_DATA / "1ubq.pdb"


def _bare_abtem(args) -> int:
    numbers, rotated_positions, height, config = args
    import abtem
    from ase import Atoms

    abtem.config.set({"dask.lazy": False, "diagnostics.progress_bar": False, "fftw.threads": 1})
    centre = np.array([config.box_A / 2, config.box_A / 2, height / 2])
    for positions in rotated_positions:
        atoms = Atoms(numbers=numbers, positions=positions + centre, cell=[config.box_A, config.box_A, height])
        potential = abtem.Potential(atoms, gpts=config.gpts, slice_thickness=config.slice_thickness_A,
                                    parametrization=config.parametrization, projection="infinite").build(lazy=False)
        wave = abtem.PlaneWave(energy=config.energy_eV).multislice(potential, lazy=False)
        wave.diffraction_patterns(max_angle=config.max_angle_mrad)
        for defocus, cutoff in ((config.image_hr.defocus_A, np.inf), (config.image_lr.defocus_A, config.image_lr.cutoff_mrad)):
            ctf = abtem.CTF(energy=config.energy_eV, defocus=defocus + height / 2, semiangle_cutoff=cutoff, soft=True)
            wave.apply_ctf(ctf).intensity()
        potential.project()
    return len(rotated_positions)


def time_bare(orientations: int, workers: int) -> float:
    config = load_simulation_config("cpu")
    structure = load_structure(STRUCTURE, config.structure)
    quaternions = uniform_quaternions(orientations, np.random.default_rng(1))
    rotated = [rotate(structure.positions_A, q) for q in quaternions]
    shares = [(structure.atomic_numbers, rotated[i::workers], cell_height_A(structure, config), config)
              for i in range(workers)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        done = sum(pool.map(_bare_abtem, shares))
    assert done == orientations
    return time.perf_counter() - start


def time_simed(orientations: int, workers: int, folder: Path, cache: Path) -> float:
    out = folder / f"bench-{time.monotonic_ns()}.h5"
    command = [sys.executable, "-m", "simed_stream.cli", "-q", "simulate", "dataset", "--preset", "cpu",
               "--pdb", str(STRUCTURE), "--orientations", str(orientations), "--seed", "1",
               "--out", str(out), "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"SIMED_CACHE_DIR": str(cache)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orientations", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bare, first, simed = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        load_structure(STRUCTURE, load_simulation_config("cpu").structure, cache / "structures")  # outside the timings
        for repeat in range(args.repeats):  # alternate, so drifts in machine load hit all alike
            bare.append(time_bare(args.orientations, args.workers))
            shutil.rmtree(cache / "fftw", ignore_errors=True)
            first.append(time_simed(args.orientations, args.workers, Path(folder), cache))
            simed.append(time_simed(args.orientations, args.workers, Path(folder), cache))
            print(f"repeat {repeat + 1}: bare abTEM {bare[-1]:.2f} s, simed {simed[-1]:.2f} s "
                  f"(first run on the machine {first[-1]:.2f} s)", flush=True)
    rate = {name: args.orientations / min(times) for name, times in
            (("simed", simed), ("simed_first_run", first), ("abtem_bare", bare))}
    print(json.dumps({
        "preset": "cpu", "structure": STRUCTURE.stem, "orientations": args.orientations, "workers": args.workers,
        "orientations_per_s": {name: round(value, 3) for name, value in rate.items()},
        "ratio": round(rate["simed"] / rate["abtem_bare"], 3),
        "ratio_first_run": round(rate["simed_first_run"] / rate["abtem_bare"], 3),
    }))


if __name__ == "__main__":
    main()
