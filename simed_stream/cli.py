"""`simed`: the command-line entry point. Each subcommand parses its options and hands over."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from simed_stream import __version__
from simed_stream.errors import SimedError

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except SimedError as error:
        print(f"simed: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simed: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simed", description="Live processing of single-molecule electron diffraction (simED) scans."
    )
    parser.add_argument("--version", action="version", version=f"simed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_simulate(commands)
    _add_demo(commands)
    return parser


def _add_simulate(commands) -> None:
    simulate = commands.add_parser("simulate", help="simulate training data with abTEM",
                                   description="Simulate simED data with abTEM.")
    simulate.set_defaults(handler=lambda _args: simulate.print_help() or 2)
    kinds = simulate.add_subparsers(title="what to simulate", metavar="KIND")
    dataset = kinds.add_parser(
        "dataset", help="diffraction / low-res / high-res / potential triplets from protein structures",
        description="Simulate training triplets for every structure in N orientations uniform on SO(3). "
        "Rerunning the same command resumes an interrupted run.",
    )
    dataset.add_argument("--preset", choices=["paper", "cpu"], help="geometry preset (see README); required unless --config sets one")
    dataset.add_argument("--pdb", type=Path, action="append", required=True, metavar="FILE",
                         help="PDB or mmCIF structure; repeat for several")
    dataset.add_argument("--orientations", type=int, required=True, metavar="N", help="orientations per structure")
    dataset.add_argument("--seed", type=int, required=True, metavar="S", help="seed for orientations and noise")
    dataset.add_argument("--out", type=Path, required=True, metavar="OUT.h5", help="output HDF5 file")
    dataset.add_argument("--workers", type=int, default=1, metavar="W", help="worker processes (one per core; default 1)")
    dataset.add_argument("--config", metavar="FILE.yaml", help="YAML settings overriding the preset")
    dataset.add_argument("--chain", help="chain to simulate (default A)")
    dataset.add_argument("--preview", type=Path, metavar="PNG", help="also write a preview PNG of the first samples")
    dataset.set_defaults(handler=_simulate_dataset)

    preview = kinds.add_parser("preview", help="PNG of the first samples of a dataset",
                               description="Write a PNG showing the first finished samples of a dataset.")
    preview.add_argument("dataset", type=Path, help="HDF5 file from `simed simulate dataset`")
    preview.add_argument("--out", type=Path, required=True, metavar="PNG")
    preview.add_argument("--samples", type=int, default=4)
    preview.set_defaults(handler=_simulate_preview)


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="run the main job on bundled data",
                               description="Simulate a bundled protein (ubiquitin) and write a preview PNG.")
    demo.add_argument("--out", type=Path, default=Path("simed-demo"), metavar="DIR", help="output directory")
    demo.add_argument("--orientations", type=int, default=4)
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(handler=_demo)


def _simulate_dataset(args) -> int:
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset

    overrides = {"structure": {"chain": args.chain}} if args.chain else {}
    config = load_simulation_config(args.preset, args.config, overrides)
    if args.workers < 1:
        raise SimedError("--workers must be at least 1")
    for path in args.pdb:
        if not path.is_file():
            raise SimedError(f"structure file {path} does not exist")
    out = simulate_dataset(DatasetRequest(args.pdb, args.orientations, args.seed, args.out, config, args.workers))
    logging.getLogger("simed").info("wrote %s", out)
    if args.preview:
        _write_preview(out, args.preview, 4)
    return 0


def _simulate_preview(args) -> int:
    if not args.dataset.is_file():
        raise SimedError(f"dataset {args.dataset} does not exist")
    _write_preview(args.dataset, args.out, args.samples)
    return 0


def _write_preview(dataset: Path, png: Path, samples: int) -> None:
    from simulator.preview import write_preview

    try:
        write_preview(dataset, png, samples)
    except (OSError, KeyError, ValueError) as error:
        raise SimedError(f"cannot preview {dataset}: {error}") from None
    logging.getLogger("simed").info("wrote %s", png)


def _demo(args) -> int:
    from simulator import BUNDLED_DATA
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    config = load_simulation_config("cpu")
    dataset = args.out / "ubiquitin-cpu.h5"
    request = DatasetRequest([BUNDLED_DATA / "1ubq.pdb"], args.orientations, 1, dataset, config, args.workers)
    simulate_dataset(request)
    png = args.out / "preview.png"
    _write_preview(dataset, png, args.orientations)
    print(f"demo: simulated {args.orientations} orientations of ubiquitin (cpu preset) into {dataset}")
    print(f"demo: preview written to {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
