"""`simed simulate dataset|scan|preview`: training data and synthetic scans with the simulator."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from simed_stream.cli.options import add_command
from simed_stream.errors import SimedError
from simulator.scan import ScanSettings


def add(commands) -> None:
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

    add_command(kinds, "scan", SimulateScanCommand, simulate_scan_command,
                "a synthetic specimen scan (capture file) from a triplets dataset")

    preview = kinds.add_parser("preview", help="PNG of the first samples of a dataset",
                               description="Write a PNG showing the first finished samples of a dataset.")
    preview.add_argument("dataset", type=Path, help="HDF5 file from `simed simulate dataset`")
    preview.add_argument("--out", type=Path, required=True, metavar="PNG")
    preview.add_argument("--samples", type=int, default=4)
    preview.set_defaults(handler=_simulate_preview)


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


class SimulateScanCommand(ScanSettings):
    dataset: Path = Field(description="triplets from `simed simulate dataset`")
    out: Path = Field(description="the capture to write (never overwritten)")


def simulate_scan_command(command: SimulateScanCommand) -> int:
    """Place particles of a simulated dataset in a scanned patch: diffraction frames per scan
    position (Poisson counts, descan drift, hot pixels), an overview image, and the ground truth.
    The result is a capture (`simed detector --capture` replays it, `simed reprocess` phases it)."""
    from simulator.scan import simulate_scan

    if not command.dataset.is_file():
        raise SimedError(f"dataset {command.dataset} does not exist")
    settings = ScanSettings(**command.model_dump(exclude={"dataset", "out"}))
    out = simulate_scan(command.dataset, command.out, settings)
    ny, nx = settings.scan_shape
    print(f"simulate scan: wrote {out} ({settings.particles} particles, {ny}x{nx} scan)")
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
