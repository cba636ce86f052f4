"""`simed train`, `simed evaluate`, `simed phase-worker`: the phaser's own commands."""

from __future__ import annotations

from pathlib import Path

from simed_stream.chain_settings import DEFAULT_MODEL
from simed_stream.errors import SimedError


def add(commands) -> None:
    _add_train(commands)
    _add_evaluate(commands)
    worker = commands.add_parser(
        "phase-worker", help="a classical-phasing worker for a live pipeline's fan-out (ZeroMQ)",
        description="Connect to a live pipeline's phasing endpoints and phase the jobs it deals, until stopped. "
        "Start one per core on any machine that can reach the endpoints (see docs/live.md).")
    worker.add_argument("--jobs", required=True, help="the pipeline's jobs endpoint")
    worker.add_argument("--results", required=True, help="the pipeline's results endpoint")
    worker.set_defaults(handler=_phase_worker)


def _phase_worker(args) -> int:
    from simed_stream.fanout import serve

    serve(args.jobs, args.results)
    return 0


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train DiffraGAN on simulated triplets",
                                description="Train the phaser from a YAML configuration (see models/train-cpu.yaml); "
                                "rerunning resumes from the run folder's checkpoint.")
    train.add_argument("--config", required=True, metavar="FILE.yaml")
    train.set_defaults(handler=_train)


def _train(args) -> int:
    from simed_stream.phasing.training import load_train_config, train

    model = train(load_train_config(args.config))
    print(f"train: model written to {model} (card beside it)")
    return 0


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score the phaser against the low-res input and classical phasing",
        description="FRC, SSIM and Fourier R-factor per sample and protein for the model, the low-res input, "
        "classical phasing and a shuffled-diffraction control; writes report.json, frc.png, gallery.png.")
    evaluate.add_argument("--model", type=Path, default=None, help=f"model.pt (default: the shipped {DEFAULT_MODEL.parent.name})")
    evaluate.add_argument("--dataset", type=Path, required=True, metavar="FILE.h5")
    evaluate.add_argument("--out", type=Path, required=True, metavar="DIR")
    evaluate.add_argument("--samples", type=int, default=8, help="orientations per protein (default 8)")
    evaluate.add_argument("--proteins", nargs="+", default=None, metavar="ID",
                          help="only these proteins of the dataset (e.g. the validation proteins, to select a model)")
    evaluate.add_argument("--passes", type=int, default=1, metavar="K",
                          help="K>1 also scores gan_ensemble: the mean over K classical starts (as --uncertainty-passes)")
    evaluate.add_argument("--json", action="store_true", help="print the report's means as JSON")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    import json

    from simed_stream.phasing.evaluation import evaluate

    model = args.model or DEFAULT_MODEL
    if not args.dataset.is_file():
        raise SimedError(f"dataset {args.dataset} does not exist")
    if args.passes < 1:
        raise SimedError("--passes must be at least 1")
    report = evaluate(model, args.dataset, args.out, args.samples, args.proteins, passes=args.passes)
    if args.json:
        print(json.dumps({"mean": report["mean"], "median": report["median"]}))
    else:
        for method, value in report["mean"]["frc05_A"].items():
            print(f"{method:>14}: FRC0.5 {value:6.2f} Å   SSIM {report['mean']['ssim'][method]:.3f}   "
                  f"Fourier R {report['mean']['fourier_r'][method]:.3f}")
        print(f"report: {args.out / 'report.json'}")
    return 0
