"""Ship a phaser: write `models/NAME/` — its card completed with the held-out evaluation, and the
network file when it has one (a training run's folder is a phaser).

The card gets what a user needs to trust it: the geometry and engine settings, the network
(file, sha256, architecture, inputs, training proteins, validation proteins, steps, wall time),
the test proteins and their evaluation (`simed evaluate`'s report.json: means, medians, success
rates, size bins, per protein, the resolution estimate's rank correlation, seconds per particle,
the dose curve), the hardware it was measured on, and notes (what was not done, and why).

    python tools/ship_model.py PHASER_DIR --name phaser-cpu --evaluation EVAL/report.json \
        [--validation VAL/report.json] [--hardware "2-core CPU (no GPU)"] [--note TEXT ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from simed_stream.phasing.inference import Phaser, card_path, read_card

EVALUATION_KEYS = ("dataset", "samples", "proteins_seen_in_making_the_phaser", "mean", "median", "success_rate",
                   "size_bins", "per_protein", "resolution_estimate", "seconds_per_particle", "dose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phaser", type=Path, help="a phaser folder (a training run, or a card to complete)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--evaluation", type=Path, required=True, help="report.json on held-out test proteins")
    parser.add_argument("--validation", type=Path, help="report.json on the validation proteins (the choices)")
    parser.add_argument("--hardware", default="2-core CPU (no GPU)")
    parser.add_argument("--note", action="append", default=[], help="a line for the card's notes (repeatable)")
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    args = parser.parse_args()
    card = read_card(args.phaser)
    phaser = Phaser(args.phaser, "cpu")  # checks the network file against its sha256
    report = json.loads(args.evaluation.read_text())
    if report.get("phaser_sha256") != phaser.sha256:
        raise SystemExit(f"{args.evaluation} scored another phaser ({report.get('phaser_sha256')}, not {phaser.sha256})")
    card["name"] = args.name
    card["evaluation"] = {k: report[k] for k in EVALUATION_KEYS if k in report}
    card["evaluation"]["hardware"] = args.hardware
    card["test_proteins"] = sorted(report["per_protein"])
    if args.validation:
        validation = json.loads(args.validation.read_text())
        card["validation"] = {k: validation[k] for k in ("samples", "mean", "median", "success_rate", "per_protein")}
    card["notes"] = args.note
    out = args.models / args.name
    out.mkdir(parents=True, exist_ok=True)
    if card.get("network"):
        source = card_path(args.phaser).with_name(card["network"]["file"])
        if source.resolve() != (out / card["network"]["file"]).resolve():
            shutil.copyfile(source, out / card["network"]["file"])
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    shipped = Phaser(out, "cpu")
    assert shipped.sha256 == phaser.sha256, "the shipped phaser is not the evaluated one"
    print(f"shipped {out} (phaser {phaser.sha256[:12]}…, network: {'yes' if card.get('network') else 'none'})")


if __name__ == "__main__":
    main()
