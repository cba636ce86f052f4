"""Run the phase-retrieval engine over a triplets dataset, into a sidecar file for training.

The network's input is the engine's result, which costs ~0.5–1 s per particle on two cores, so it
is computed once per dataset: `DATASET.engine.h5` (or `--out`) holds `sigma_v` and `spread`
(N, S, S) float32 on the image grid, `r_free`, `resolution_A`, `flag` per sample, `seconds` per
batch and a `done` mask (training uses the done samples: `--samples-per-protein` makes a partial
sidecar); it records the dataset's fingerprint, the engine settings and the diffraction dose,
and resumes where it stopped.

    python tools/precompute_engine.py DATASET.h5 [--settings phaser_card.json] [--diffraction-dose 1e5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from simed_stream.phasing.classical import Geometry
from simed_stream.phasing.engine import EngineSettings, PhaseRetrievalEngine
from simed_stream.phasing.inference import read_card
from simed_stream.phasing.preprocess import NOISE_KEY, counting_noise

DEFAULT_CARD = Path(__file__).resolve().parents[1] / "models" / "phaser-cpu" / "model_card.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--settings", type=Path, default=DEFAULT_CARD, help="phaser card whose engine settings to use")
    parser.add_argument("--diffraction-dose", type=float, default=None, metavar="E_PER_A2",
                        help="add counting noise at this dose before phasing (default: the stored patterns)")
    parser.add_argument("--out", type=Path, default=None, help="sidecar path (default DATASET.engine.h5)")
    parser.add_argument("--samples-per-protein", type=int, default=None, metavar="N",
                        help="only the first N orientations of each protein (the rest stay not done)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = EngineSettings.from_json(read_card(args.settings)["engine"])
    out_path = args.out or args.dataset.with_suffix(".engine.h5")
    with h5py.File(args.dataset, "r") as f:
        fingerprint, total, size = f.attrs["fingerprint"], len(f["done"]), int(f.attrs["image_size_px"])
        seed = int(f.attrs["seed"])
        geometry = Geometry.from_attrs(f.attrs)
        box_A = float(f.attrs["box_A"])
        if not f["done"][:].all():
            sys.exit(f"{args.dataset} is not complete; finish `simed simulate dataset` first")
    identity = json.dumps({"dataset": fingerprint, "engine": settings.to_json(), "diffraction_dose": args.diffraction_dose},
                          sort_keys=True)
    engine = PhaseRetrievalEngine(geometry, settings, "auto")
    with h5py.File(args.dataset, "r") as f, h5py.File(out_path, "a") as out:
        if "sigma_v" not in out:
            out.attrs["identity"] = identity
            for name in ("sigma_v", "spread"):
                out.create_dataset(name, (total, size, size), np.float32, chunks=(1, size, size), compression="gzip",
                                   shuffle=True)
            for name in ("r_free", "resolution_A", "seconds"):
                out.create_dataset(name, (total,), np.float64, fillvalue=np.nan)
            out.create_dataset("flag", (total,), h5py.string_dtype(), fillvalue="")
            out.create_dataset("done", (total,), bool)
        elif out.attrs["identity"] != identity:
            sys.exit(f"{out_path} was made from another dataset, settings or dose; remove it first")
        wanted = np.ones(total, bool)
        if args.samples_per_protein is not None:
            per_protein = int(f.attrs["orientations_per_protein"])
            wanted = (np.arange(total) % per_protein) < args.samples_per_protein
        todo = np.flatnonzero(~out["done"][:] & wanted)
        for first in tqdm(range(0, len(todo), args.batch), unit="batch", desc=out_path.name):
            index = todo[first : first + args.batch]
            patterns = np.stack([counting_noise(f["diffraction"][i].astype(np.float64), args.diffraction_dose, box_A,
                                                (seed, int(i), NOISE_KEY)) for i in index])
            started = time.perf_counter()
            result = engine(patterns, np.stack([f["image_lr"][i] for i in index]).astype(np.float64))
            seconds = (time.perf_counter() - started) / len(index)
            for row, i in enumerate(index):
                out["sigma_v"][i], out["spread"][i] = result.sigma_v[row], result.spread[row]
                out["r_free"][i], out["resolution_A"][i] = result.r_free[row], result.resolution_A[row]
                out["flag"][i] = result.flags[row] or ""
                out["seconds"][i] = seconds
                out["done"][i] = True
            out.flush()


if __name__ == "__main__":
    main()
