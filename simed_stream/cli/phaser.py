"""`simed train`, `simed evaluate`: the phaser's own commands (`simed phase-worker`: phase_worker.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from simed_stream.chain_settings import DEFAULT_MODEL
from simed_stream.errors import SimedError


def add(commands) -> None:
    _add_train(commands)
    _add_evaluate(commands)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train the network that refines the engine's result",
                                description="Train the refining network from a YAML configuration (see "
                                "models/train-cpu.yaml) on datasets with engine sidecars (tools/precompute_engine.py); "
                                "rerunning resumes from the run folder's checkpoint. The run folder is a phaser.")
    train.add_argument("--config", required=True, metavar="FILE.yaml")
    train.set_defaults(handler=_train)


def _train(args) -> int:
    from simed_stream.phasing.training import load_train_config, train

    model = train(load_train_config(args.config))
    print(f"train: network written to {model}; its folder is a phaser (model_card.json beside it)")
    return 0


def _doses(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected doses such as 1e4,1e5,1e6 (e/Å²), got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("doses must be positive numbers of electrons per Å²")
    return values


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score the phaser against its parts, classical phasing and the low-res input",
        description="FRC0.5 per sample, protein and size bin for the default phaser (gan), the engine alone, "
        "classical phasing, the low-res input and a shuffled-diffraction control; success rates, the resolution "
        "estimate's rank correlation with the truth, seconds per particle, optionally a dose-resolution curve. "
        "Writes report.json, frc.png, gallery.png (and dose.png).")
    evaluate.add_argument("--model", "--phaser", dest="model", type=Path, default=None,
                          help=f"phaser folder or card (default: the shipped {DEFAULT_MODEL.name})")
    evaluate.add_argument("--dataset", type=Path, required=True, metavar="FILE.h5")
    evaluate.add_argument("--out", type=Path, required=True, metavar="DIR")
    evaluate.add_argument("--samples", type=int, default=8, help="orientations per protein (default 8)")
    evaluate.add_argument("--proteins", nargs="+", default=None, metavar="ID",
                          help="only these proteins of the dataset (e.g. the validation proteins, to select a model)")
    evaluate.add_argument("--diffraction-dose", type=_doses, default=None, metavar="D1,D2,...",
                          help="also score with counting noise at each dose (e/Å² over the box): the dose curve")
    evaluate.add_argument("--workers", type=int, default=2, help="processes for the classical baseline (default 2)")
    evaluate.add_argument("--json", action="store_true", help="print the report's summary as one JSON line")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    import json

    from simed_stream.phasing.evaluation import evaluate

    if args.samples < 2:
        raise SimedError("--samples must be at least 2 (the shuffled control needs another orientation)")
    if args.workers < 1:
        raise SimedError("--workers must be at least 1")
    report = evaluate(args.model or DEFAULT_MODEL, args.dataset, args.out, args.samples, args.proteins,
                      doses=args.diffraction_dose, workers=args.workers)
    if args.json:
        summary = {k: report[k] for k in ("mean", "success_rate", "resolution_estimate", "seconds_per_particle")}
        if "dose" in report:
            summary["dose_for_3A"] = report["dose"]["dose_for_3A"]
        print(json.dumps(summary))
    else:
        for method, value in report["mean"]["frc05_A"].items():
            print(f"{method:>14}: FRC0.5 mean {value:6.2f} Å, median {report['median']['frc05_A'][method]:6.2f} Å, "
                  f"success {report['success_rate'][method]:.0%}")
        print(f"resolution estimate vs truth: Spearman {report['resolution_estimate']['spearman']:.2f}; "
              f"{report['seconds_per_particle']:.2f} s per particle")
        if "dose" in report:
            print(f"dose for 3 Å (median FRC0.5): {report['dose']['dose_for_3A']}")
        print(f"report: {args.out / 'report.json'}")
    return 0
