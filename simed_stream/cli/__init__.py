"""`simed`: the command-line entry point. Each command's module adds its parser and hands over;
commands with settings take them from one settings model (flags and YAML alike, `options.py`).

The CLI is the one place `simed_stream` may use `simulator` (the fake detector, the demo's
simulation): everything below it runs without the simulator.
"""

from __future__ import annotations

import argparse
import logging
import sys

from simed_stream import __version__
from simed_stream.cli import demo, detector, keys, live, overview, phase_worker, phaser, receive, reprocess, simulate
from simed_stream.cli.options import add_command
from simed_stream.errors import SimedError
from simed_stream.live.settings import LiveSettings

#: commands whose options are one settings model: (name, model, what runs it, one-line help)
SETTINGS_COMMANDS = (
    ("receive", receive.ReceiveCommand, receive.receive,
     "receive a detector's stream (simed, dectris, merlin, serval) into lossless HDF5 captures"),
    ("overview", overview.OverviewCommand, overview.overview, "send the microscope's overview image to a running receiver"),
    ("reprocess", reprocess.ReprocessCommand, reprocess.reprocess,
     "phase the particles of recorded captures into a RELION-ready stack"),
    ("run", LiveSettings, live.run, "the live pipeline beside the microscope"),
    ("replay", live.ReplayCommand, live.replay, "a recorded capture through the live path"),
    ("demo", demo.DemoCommand, demo.demo, "the whole live chain on bundled data (under 2 minutes on 2 cores)"),
    ("phase-worker", phase_worker.PhaseWorkerCommand, phase_worker.phase_worker,
     "a phase-retrieval worker for a live pipeline's fan-out (ZeroMQ)"),
    ("keys", keys.KeysCommand, keys.keys, "make a CURVE key pair for links that leave the machine"),
)


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
    simulate.add(commands)
    detector.add(commands)
    phaser.add(commands)
    for name, model, run, summary in SETTINGS_COMMANDS:
        add_command(commands, name, model, run, summary)
    return parser
