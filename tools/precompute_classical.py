"""Run classical phasing (HIO + shrink-wrap + ER) over a triplets dataset, into a sidecar file.

The phaser's classical input is expensive (~1–2.5 s per particle per core), so it is computed
once per dataset: `DATASET.classical.h5` holds `classical` (N, S, S) float32 (σV on the image
grid), `seconds` per sample and a `done` mask; it records the dataset's fingerprint and the
settings, and resumes where it stopped.

    python tools/precompute_classical.py DATASET.h5 [--workers 2] [--hio-iterations 800]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from simed_stream.phasing.classical import Geometry, HIOSettings, phase

_STATE: dict = {}


def _init(dataset: str, settings: HIOSettings) -> None:
    _STATE["file"] = h5py.File(dataset, "r")
    _STATE["geometry"] = Geometry.from_attrs(_STATE["file"].attrs)
    _STATE["settings"] = settings


def _work(index: int) -> tuple[int, np.ndarray, float]:
    f = _STATE["file"]
    start = time.perf_counter()
    result = phase(f["diffraction"][index].astype(np.float64), f["image_lr"][index].astype(np.float64),
                   _STATE["geometry"], _STATE["settings"])
    return index, result.astype(np.float32), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hio-iterations", type=int, default=800)
    parser.add_argument("--er-iterations", type=int, default=100)
    args = parser.parse_args()
    settings = HIOSettings(hio_iterations=args.hio_iterations, er_iterations=args.er_iterations)
    out_path = args.dataset.with_suffix(".classical.h5")
    with h5py.File(args.dataset, "r") as f:
        fingerprint, total, size = f.attrs["fingerprint"], len(f["done"]), f.attrs["image_size_px"]
        if not f["done"][:].all():
            sys.exit(f"{args.dataset} is not complete; finish `simed simulate dataset` first")
    identity = json.dumps({"dataset": fingerprint, "settings": asdict(settings)}, sort_keys=True)
    with h5py.File(out_path, "a") as out:
        if "classical" not in out:
            out.attrs["identity"] = identity
            out.create_dataset("classical", (total, size, size), np.float32, chunks=(1, size, size),
                               compression="gzip", shuffle=True)
            out.create_dataset("seconds", (total,), np.float64)
            out.create_dataset("done", (total,), bool)
        elif out.attrs["identity"] != identity:
            sys.exit(f"{out_path} was made from another dataset or with other settings; remove it first")
        todo = [int(i) for i in np.flatnonzero(~out["done"][:])]
        print(f"{len(todo)} of {total} samples to phase with {args.workers} worker(s)", flush=True)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, initializer=_init, initargs=(str(args.dataset), settings)) as pool:
            results = pool.imap(_work, todo, chunksize=4)
            for count, (index, result, seconds) in enumerate(tqdm(results, total=len(todo), unit="sample"), 1):
                out["classical"][index] = result
                out["seconds"][index] = seconds
                out["done"][index] = True
                if count % 50 == 0:
                    out.flush()


if __name__ == "__main__":
    main()
