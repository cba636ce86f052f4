"""Ship a trained model: copy a run's `model.pt` into `models/NAME/` with a complete model card.

The card gets what a user needs to trust and reuse the checkpoint: the training run's card
(architecture, geometry, target, training proteins and validation proteins, steps, wall time),
the classical settings its inputs were made with (from the training data's sidecar when the
run's card predates that field), the preset and input normalisation, the hardware, and the
held-out evaluation (`simed evaluate`'s report.json: means, medians, per protein).

    python tools/ship_model.py RUN_DIR --name diffragan-cpu --evaluation EVAL/report.json \
        [--validation VAL/report.json] [--hardware "2-core CPU"]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import h5py

from simed_stream.phasing.preprocess import INPUT_NORMALISATION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (model.pt, model_card.json)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--evaluation", type=Path, required=True, help="report.json on held-out test proteins")
    parser.add_argument("--validation", type=Path, help="report.json on the validation proteins (model selection)")
    parser.add_argument("--hardware", default="2-core CPU (no GPU)")
    parser.add_argument("--history", help="how the run came to be (e.g. an earlier run it started from), for the card")
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    args = parser.parse_args()
    card = json.loads((args.run / "model_card.json").read_text())
    datasets = card["training"]["datasets"]
    if "classical" not in card or card["classical"] is None:
        with h5py.File(Path(datasets[0]).with_suffix(".classical.h5"), "r") as sidecar:
            card["classical"] = json.loads(sidecar.attrs["identity"])["settings"]
    if "preset" not in card:
        with h5py.File(datasets[0], "r") as f:
            card["preset"] = str(f.attrs.get("preset", "custom"))
            card["training"]["samples"] = int(f["done"][:].sum())
    card.setdefault("input_normalisation", INPUT_NORMALISATION)
    card["training"]["hardware"] = args.hardware
    if args.history:
        card["training"]["history"] = args.history
    report = json.loads(args.evaluation.read_text())
    card["evaluation"] = {k: report[k] for k in ("dataset", "samples", "proteins_seen_in_training", "mean", "median",
                                                 "per_protein")}
    if args.validation:
        validation = json.loads(args.validation.read_text())
        card["validation"] = {k: validation[k] for k in ("samples", "mean", "median", "per_protein")}
    out = args.models / args.name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "model.pt", out / "model.pt")
    digest = hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    if digest != card["sha256"]:
        raise SystemExit(f"{args.run / 'model.pt'} does not match its card's sha256")
    if report.get("model_sha256") != digest:
        raise SystemExit(f"{args.evaluation} scored another model ({report.get('model_sha256')})")
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    size_mb = (out / "model.pt").stat().st_size / 1e6
    print(f"shipped {out / 'model.pt'} ({size_mb:.1f} MB) with its card")


if __name__ == "__main__":
    main()
