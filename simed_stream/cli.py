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
    _add_detector(commands)
    _add_receive(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_reprocess(commands)
    _add_live(commands)
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

    scan = kinds.add_parser(
        "scan", help="a synthetic specimen scan (capture file) from a triplets dataset",
        description="Place particles of a simulated dataset in a scanned patch: diffraction frames per scan "
        "position (Poisson counts, descan drift, hot pixels), an overview image, and the ground truth. The result "
        "is a capture (`simed detector --capture` replays it, `simed reprocess` phases it).")
    scan.add_argument("--dataset", type=Path, required=True, metavar="TRIPLETS.h5")
    scan.add_argument("--scan-shape", type=_shape, default=(12, 12), metavar="HxW", help="scan positions (default 12x12)")
    scan.add_argument("--particles", type=int, default=10, metavar="P", help="particles in the patch (default 10)")
    scan.add_argument("--frames-per-position", type=int, default=2, metavar="F")
    scan.add_argument("--electrons-per-position", type=float, default=1e11, metavar="E",
                      help="dose per scan position (default 1e11: what phasing needs, see docs/simulation.md)")
    scan.add_argument("--seed", type=int, default=0, metavar="S")
    scan.add_argument("--out", type=Path, required=True, metavar="CAPTURE.h5")
    scan.set_defaults(handler=_simulate_scan)

    preview = kinds.add_parser("preview", help="PNG of the first samples of a dataset",
                               description="Write a PNG showing the first finished samples of a dataset.")
    preview.add_argument("dataset", type=Path, help="HDF5 file from `simed simulate dataset`")
    preview.add_argument("--out", type=Path, required=True, metavar="PNG")
    preview.add_argument("--samples", type=int, default=4)
    preview.set_defaults(handler=_simulate_preview)


def _shape(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 32x32, got {text!r}") from None
    if y < 1 or x < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return y, x


def _rate(text: str) -> str | float:
    if text in ("recorded", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'recorded', 'max' or frames per second, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value


def _add_detector(commands) -> None:
    from simed_stream.protocol import DEFAULT_CONTROL_ENDPOINT, DEFAULT_DATA_ENDPOINT

    detector = commands.add_parser(
        "detector", help="fake ASI/JEOL detector: stream a capture or a synthetic scan over simed-stream/1",
        description="Stream a capture file (verbatim, bit for bit) or a synthetic scan as a live detector would: "
        "PUSH data socket bound on loopback, REP control socket answering status/arm/abort.",
    )
    source = detector.add_mutually_exclusive_group(required=True)
    source.add_argument("--capture", type=Path, metavar="FILE.h5", help="capture written by `simed receive`")
    source.add_argument("--synthetic", action="store_true", help="a synthetic scan (direct beam, descan drift, hot pixels)")
    detector.add_argument("--data", default=DEFAULT_DATA_ENDPOINT, help=f"data endpoint to bind (default {DEFAULT_DATA_ENDPOINT})")
    detector.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT,
                          help=f"control endpoint to bind, or 'none' (default {DEFAULT_CONTROL_ENDPOINT})")
    detector.add_argument("--rate", type=_rate, default="recorded", metavar="FPS|recorded|max",
                          help="frames per second, the recorded timing (default) or as fast as possible")
    detector.add_argument("--loop", action="store_true", help="repeat the series until stopped (new series ids)")
    detector.add_argument("--faults", default="", metavar="SPEC",
                          help="e.g. drop=0.01,source_drop=0.01,reorder=0.01,duplicate=0.01,truncate=0.01,garbage=0.01,"
                          "wrong_shape=0.01,wrong_dtype=0.01,oversize=1,disconnect=1,no_end,late_overview=2,no_overview")
    detector.add_argument("--seed", type=int, default=0, help="seed for faults and synthetic data")
    detector.add_argument("--wait-arm", action="store_true", help="start each series only on an 'arm' command")
    detector.add_argument("--nav-shape", type=_shape, default=(32, 32), metavar="HxW", help="synthetic scan positions")
    detector.add_argument("--sig-shape", type=_shape, default=(256, 256), metavar="HxW", help="synthetic frame size")
    detector.add_argument("--frames-per-position", type=int, default=4, help="synthetic sub-frames per position")
    detector.add_argument("--batch-frames", type=int, default=32, help="synthetic frames per message")
    detector.add_argument("--series-id", default=None, help="synthetic series id (default: time-based)")
    detector.add_argument("--max-message-bytes", type=int, default=None,
                          help="the receiver's message size limit (for the oversize fault)")
    detector.set_defaults(handler=_detector)


def _detector(args) -> int:
    import time

    import zmq

    from simed_stream.protocol import DEFAULT_MAX_MESSAGE_BYTES
    from simulator.detector import FakeDetector, FaultPlan, capture_series, synthetic_series

    try:
        faults = FaultPlan.parse(args.faults)
    except ValueError as error:
        raise SimedError(f"--faults: {error}") from None
    _warn_if_not_loopback(args.data)
    if args.capture is not None:
        if not args.capture.is_file():
            raise SimedError(f"capture {args.capture} does not exist")
        try:
            capture_series(args.capture)
        except ValueError as error:
            raise SimedError(str(error)) from None
        make = lambda: capture_series(args.capture)  # noqa: E731
    else:
        series_id = args.series_id or time.strftime("synthetic-%Y%m%d-%H%M%S")
        make = lambda: synthetic_series(series_id, args.nav_shape, args.frames_per_position, args.sig_shape,  # noqa: E731
                                        batch_frames=args.batch_frames, seed=args.seed)
    control = None if args.control == "none" else args.control
    if control:
        _warn_if_not_loopback(control)
    detector = FakeDetector(args.data, control, rate_fps=args.rate, faults=faults, seed=args.seed,
                            max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
                            wait_for_arm=args.wait_arm)
    try:
        detector.__enter__()
    except zmq.ZMQError as error:
        raise SimedError(f"cannot bind {args.data} / {control}: {error}") from None
    try:  # entered above, so that a bind error is reported plainly
        logging.getLogger("simed").info("detector bound to %s; waiting for a receiver", args.data)
        try:
            detector.run([make], loop=args.loop)
        except TimeoutError as error:
            raise SimedError(str(error)) from None
        status = detector.status()
    finally:
        detector.__exit__(None, None, None)
    print(f"detector: {status['series_done']} series, last {status['series_id']}: {status['frames_sent']} frames sent, "
          f"{status['frames_dropped_at_source']} dropped at source")
    return 0


def _warn_if_not_loopback(endpoint: str) -> None:
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]") and not endpoint.startswith(("ipc://", "inproc://")):
        logging.getLogger("simed").warning("%s is not a loopback address: other machines can reach it", endpoint)


def _add_receive(commands) -> None:
    from simed_stream.protocol import DEFAULT_DATA_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES

    receive = commands.add_parser(
        "receive", help="receive a simed-stream/1 stream into lossless HDF5 captures",
        description="Connect to a detector's data socket, validate and account for every frame, sum and centre "
        "each scan position and write one capture per series, until stopped (Ctrl-C) or --series are done.",
    )
    receive.add_argument("--data", default=DEFAULT_DATA_ENDPOINT, help=f"detector data endpoint (default {DEFAULT_DATA_ENDPOINT})")
    receive.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the captures")
    receive.add_argument("--series", type=int, default=0, help="stop after this many series (default: run until Ctrl-C)")
    receive.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    receive.add_argument("--series-timeout-s", type=float, default=10.0,
                         help="close a series with no series_end after this long without messages")
    receive.add_argument("--overview-grace-s", type=float, default=5.0,
                         help="after series_end, wait this long for the overview image")
    receive.add_argument("--status-interval-s", type=float, default=1.0, help="seconds between status lines")
    receive.set_defaults(handler=_receive)


def _receive(args) -> int:
    import json
    import time

    import zmq

    from simed_stream.ingest import Receiver, ReceiverSettings

    _warn_if_not_loopback(args.data)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SimedError(f"cannot create {args.out}: {error.strerror}") from None
    settings = ReceiverSettings(args.out, args.data, args.max_message_bytes, series_timeout_s=args.series_timeout_s,
                                overview_grace_s=args.overview_grace_s)
    receiver = Receiver(settings, on_series_closed=lambda s: print(
        f"series {s.series_id} closed ({s.end_status}) -> {s.path}: {json.dumps(s.accounting)}"
        + "".join(f"\n  note: {note}" for note in s.notes), flush=True))
    try:
        receiver.start()
    except zmq.ZMQError as error:
        raise SimedError(f"cannot connect to {args.data}: {error}") from None
    with receiver:  # already started: __enter__ does not start it again
        try:
            while not args.series or len(receiver.closed) < args.series:
                time.sleep(args.status_interval_s)
                if receiver.error is not None:
                    raise SimedError(f"receiver failed: {receiver.error}")
                status = receiver.status()
                logging.getLogger("simed").info(
                    "%.0f frames/s, %d received, %d rejected messages, queue %d/%d, lag %.2f s, open: %s",
                    status["frames_per_s"], status["frames_received"], status["rejected_messages"],
                    status["queue_depth"], status["queue_capacity"], status["lag_s"], ", ".join(status["open_series"]) or "-")
        except KeyboardInterrupt:
            print("receive: stopping; open series are closed with what was received", file=sys.stderr)
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


from simed_stream.phasing import DEFAULT_PHASER as DEFAULT_MODEL  # noqa: E402


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
    report = evaluate(args.model or DEFAULT_MODEL, args.dataset, args.out, args.samples, args.proteins,
                      doses=args.diffraction_dose, workers=args.workers)
    if args.json:
        print(json.dumps({k: report[k] for k in ("mean", "success_rate", "resolution_estimate", "seconds_per_particle")}
                         | ({"dose_for_3A": report["dose"]["dose_for_3A"]} if "dose" in report else {})))
    else:
        for method, value in report["mean"]["frc05_A"].items():
            print(f"{method:>14}: FRC0.5 mean {value:6.2f} Å, median {report['median']['frc05_A'][method]:6.2f} Å, "
                  f"success {report['success_rate'][method]:.0%}")
        print(f"resolution estimate vs truth: Spearman {report['resolution_estimate']['spearman']:.2f}; "
              f"{report['seconds_per_particle']:.2f} s per particle")
        if "dose" in report:
            print(f"dose for 3 Å (median): {report['dose']['dose_for_3A']}")
        print(f"report: {args.out / 'report.json'}")
    return 0


def _add_chain_options(parser) -> None:
    """Options of the particle chain, shared by `reprocess`, `run`, `replay` and `demo`."""
    parser.add_argument("--model", type=Path, default=None, help="model.pt (default: the shipped diffragan-cpu)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--diameter-A", type=float, default=40.0, help="particle diameter for picking (default 40)")
    parser.add_argument("--threshold", type=float, default=5.0, help="pick threshold in background sigmas (default 5)")
    parser.add_argument("--min-coverage", type=float, default=1.0,
                        help="fraction of a position's frames needed to phase a particle (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="particles per phasing batch and .mrcs (default 16)")
    parser.add_argument("--uncertainty-passes", type=int, default=1, metavar="K",
                        help="K>1: K classical runs (K-1 from random starts) through the network; the stack holds "
                        "their mean and the STAR an uncertainty per particle (K times the cost; default 1: off)")


def chain_settings(args):
    from simed_stream.localise import PickSettings
    from simed_stream.pipeline import ChainSettings

    if not 0 < args.min_coverage <= 1:
        raise SimedError("--min-coverage must be in (0, 1]")
    if args.batch_size < 1:
        raise SimedError("--batch-size must be at least 1")
    if args.uncertainty_passes < 1:
        raise SimedError("--uncertainty-passes must be at least 1")
    return ChainSettings(PickSettings(diameter_A=args.diameter_A, threshold_sigma=args.threshold),
                         min_coverage=args.min_coverage, batch_size=args.batch_size,
                         uncertainty_passes=args.uncertainty_passes)


def _add_reprocess(commands) -> None:
    reprocess = commands.add_parser(
        "reprocess", help="phase the particles of recorded captures into a RELION-ready stack",
        description="Offline, the same stages as live: pick particles in each capture's overview, match them to "
        "scan positions, phase them, and write DIR/<series>/ with particles_NNNN.mrcs, particles.star, "
        "picks.json, result.json and report.png. Captures are only read.")
    reprocess.add_argument("captures", type=Path, nargs="+", metavar="CAPTURE.h5")
    reprocess.add_argument("--out", type=Path, required=True, metavar="DIR")
    _add_chain_options(reprocess)
    reprocess.add_argument("--scheduler", default=None, metavar="local|ADDRESS|none",
                           help="Dask: 'local' (a local cluster; the default for several captures), the address of a "
                           "running scheduler (tcp://host:8786), or 'none' (one after the other, here)")
    reprocess.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster (default 2)")
    reprocess.add_argument("--json", action="store_true", help="print the results as JSON")
    reprocess.set_defaults(handler=_reprocess)


def _reprocess(args) -> int:
    import json

    from simed_stream.pipeline import reprocess_captures

    settings = chain_settings(args)
    scheduler = args.scheduler or ("local" if len(args.captures) > 1 else "none")
    if args.workers < 1:
        raise SimedError("--workers must be at least 1")
    results = reprocess_captures(args.captures, args.out, args.model or DEFAULT_MODEL, settings, args.device,
                                 None if scheduler == "none" else scheduler, args.workers)
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    for r in results:
        print(f"reprocess: {r.series_id}: {r.status}; {r.picks} picks, {r.phased} phased"
              + "".join(f", {n} flagged ({why})" for why, n in r.flagged.items()) + f" -> {r.out_dir}")
    return 0 if all(r.status == "phased" for r in results) else 1


def _live_config_model():
    from typing import Literal, Optional

    from pydantic import Field

    from simed_stream.config import StrictModel
    from simed_stream.protocol import DEFAULT_DATA_ENDPOINT

    class Picking(StrictModel):
        diameter_A: float = Field(40.0, gt=0)
        threshold_sigma: float = Field(5.0, gt=0)

    class Live(StrictModel):
        out: Path
        data_endpoint: str = DEFAULT_DATA_ENDPOINT
        model: Optional[Path] = None
        device: Literal["auto", "cpu", "cuda"] = "auto"
        picking: Picking = Picking()
        min_coverage: float = Field(1.0, gt=0, le=1)
        batch_size: int = Field(16, gt=0)
        batch_latency_s: float = Field(1.0, gt=0)
        overview_timeout_s: float = Field(10.0, gt=0)
        series_timeout_s: float = Field(10.0, gt=0)
        max_series: Optional[int] = Field(None, gt=0, description="stop after this many series (default: until Ctrl-C)")
        phasing_workers: int = Field(0, ge=0, description="classical phasing in worker processes over ZeroMQ")

    return Live


def _add_live(commands) -> None:
    run = commands.add_parser(
        "run", help="the live pipeline beside the microscope",
        description="Connect to the detector's data socket; ingest and capture every series, pick, match and "
        "phase its particles as they come, and keep a RELION-ready stack per series, until Ctrl-C. "
        "Writes OUT/captures/, OUT/<series>/ and OUT/status.json (about once a second).")
    run.add_argument("--config", required=True, metavar="live.yaml", help="settings (see docs/live.md)")
    run.set_defaults(handler=_run)

    replay = commands.add_parser(
        "replay", help="a recorded capture through the live path",
        description="Start a paced fake detector on the capture (on a private local socket) and run the live "
        "pipeline on it; or, with --data, connect to a detector that is already replaying it.")
    replay.add_argument("capture", type=Path, metavar="CAPTURE.h5")
    replay.add_argument("--out", type=Path, required=True, metavar="DIR")
    replay.add_argument("--rate", type=_rate, default="recorded", help="recorded (default), max or frames per second")
    replay.add_argument("--data", default=None, help="connect to this endpoint instead of starting a detector")
    replay.add_argument("--phasing-workers", type=int, default=0,
                        help="classical phasing in this many worker processes over ZeroMQ (default 0: in-process)")
    _add_chain_options(replay)
    replay.set_defaults(handler=_replay)

    worker = commands.add_parser(
        "phase-worker", help="a classical-phasing worker for a live pipeline's fan-out (ZeroMQ)",
        description="Connect to a live pipeline's phasing endpoints and phase the jobs it deals, until stopped. "
        "Start one per core on any machine that can reach the endpoints (see docs/live.md).")
    worker.add_argument("--jobs", required=True, help="the pipeline's jobs endpoint")
    worker.add_argument("--results", required=True, help="the pipeline's results endpoint")
    worker.set_defaults(handler=lambda args: __import__("simed_stream.fanout", fromlist=["serve"]).serve(args.jobs, args.results))


def _print_status(status: dict) -> None:
    from simed_stream.live import status_line

    end = "\r" if sys.stderr.isatty() else "\n"
    print(status_line(status), end=end, file=sys.stderr, flush=True)


def _run(args) -> int:
    from simed_stream.config import read_yaml_mapping, validate_config
    from simed_stream.live import LivePipeline, LiveSettings
    from simed_stream.localise import PickSettings
    from simed_stream.pipeline import ChainSettings

    config = validate_config(_live_config_model(), read_yaml_mapping(args.config), args.config)
    _warn_if_not_loopback(config.data_endpoint)
    chain = ChainSettings(PickSettings(diameter_A=config.picking.diameter_A,
                                       threshold_sigma=config.picking.threshold_sigma),
                          min_coverage=config.min_coverage, batch_size=config.batch_size)
    settings = LiveSettings(config.out, config.model or DEFAULT_MODEL, config.data_endpoint, config.device, chain,
                            config.batch_latency_s, config.overview_timeout_s, config.series_timeout_s,
                            phasing_workers=config.phasing_workers)
    return _run_live(LivePipeline(settings, max_series=config.max_series, on_status=_print_status))


def _run_live(pipeline) -> int:
    import signal

    previous = signal.signal(signal.SIGINT, lambda *_: pipeline.stop())  # Ctrl-C: stop cleanly, keep everything
    try:
        results = pipeline.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    for r in results:
        print(f"series {r.series_id}: {r.status}; {r.picks} picks, {r.phased} phased"
              + "".join(f", {n} flagged ({why})" for why, n in r.flagged.items()) + f" -> {r.out_dir}")
    print(f"status: {pipeline.out_dir / 'status.json'}")
    return 0 if results and all(r.status == "phased" for r in results) and not pipeline.errors else 1


def _replay(args) -> int:
    from simed_stream.live import replay_capture

    pipeline = replay_capture(args.capture, args.out, chain_settings(args), args.model or DEFAULT_MODEL, args.device,
                              args.rate, args.data, _print_status, _run_live, args.phasing_workers)
    return 0 if pipeline.results and all(r.status == "phased" for r in pipeline.results) else 1


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the whole live chain on bundled data (under 2 minutes on 2 cores)",
        description="Simulate ubiquitin (bundled, never used in training) in a few orientations, place the "
        "particles in a synthetic 10x10 scan, stream it from the fake detector through the live pipeline with the "
        "shipped model, and write the stack, STAR, status.json and report.")
    demo.add_argument("--out", type=Path, default=Path("simed-demo"), metavar="DIR", help="output directory")
    demo.add_argument("--particles", type=int, default=8)
    demo.add_argument("--workers", type=int, default=2, help="simulation processes (default 2)")
    demo.add_argument("--model", type=Path, default=None, help="model.pt (default: the shipped diffragan-cpu)")
    demo.set_defaults(handler=_demo)


def _demo(args) -> int:
    import time

    from simed_stream.pipeline import ChainSettings
    from simulator import BUNDLED_DATA
    from simulator.config import load_simulation_config
    from simulator.dataset import DatasetRequest, simulate_dataset
    from simulator.scan import ScanSettings, simulate_scan

    started = time.monotonic()
    model = args.model or DEFAULT_MODEL
    if not model.is_file():
        raise SimedError(f"model {model} does not exist (a fresh clone ships it under models/)")
    data = args.out / "inputs"
    data.mkdir(parents=True, exist_ok=True)
    dataset = data / "ubiquitin-cpu.h5"
    print(f"demo: 1/3 simulating {args.particles} orientations of ubiquitin with abTEM -> {dataset}", flush=True)
    config = load_simulation_config("cpu")
    simulate_dataset(DatasetRequest([BUNDLED_DATA / "1ubq.pdb"], args.particles, 1, dataset, config, args.workers,
                                    progress=False))
    scan = data / f"scan-{time.strftime('%Y%m%d-%H%M%S')}.h5"
    print(f"demo: 2/3 placing them in a 10x10 scan with an overview image -> {scan}", flush=True)
    simulate_scan(dataset, scan, ScanSettings(scan_shape=(10, 10), particles=args.particles, seed=1))
    run_dir = args.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"demo: 3/3 streaming it from the fake detector (2000 frames/s) through the live pipeline -> {run_dir}",
          flush=True)
    from simed_stream.live import replay_capture

    pipeline = replay_capture(scan, run_dir, ChainSettings(), model, "auto", 2000.0, None, _print_status, _run_live)
    import json

    import h5py

    from simed_stream.pipeline import read_truth, score_series_dir

    with h5py.File(scan, "r") as f:
        truth = read_truth(f)
    for r in pipeline.results:
        print(f"demo: {r.status}: {r.phased} of {r.picks} picked particles phased into {r.out_dir}/particles.star")
        if r.status == "phased":
            card = pipeline.phaser.phaser
            pick_score, frc05 = score_series_dir(r.out_dir, truth, ChainSettings().picking.diameter_A,
                                                 card.geometry.image_pixel_A, card.target, card.geometry.image_pixel_A)
            print(f"demo: against the simulation's truth: picking F1 {pick_score['f1']:.2f} "
                  f"(precision {pick_score['precision']:.2f}, recall {pick_score['recall']:.2f})"
                  + (f"; phased particles FRC0.5 mean {frc05['mean']:.2f} Å, median {frc05['median']:.2f} Å"
                     if frc05 else ""))
            r.pick_score, r.frc05_A_vs_truth = pick_score, frc05  # the live stream carried no truth
            (r.out_dir / "result.json").write_text(json.dumps(r.as_dict(), indent=2))
        print(f"demo: report {r.out_dir}/report.png, status {run_dir}/status.json")
    print(f"demo: done in {time.monotonic() - started:.0f} s")
    return 0 if pipeline.results and all(r.status == "phased" for r in pipeline.results) else 1


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


def _simulate_scan(args) -> int:
    from simulator.scan import ScanSettings, simulate_scan

    if not args.dataset.is_file():
        raise SimedError(f"dataset {args.dataset} does not exist")
    settings = ScanSettings(scan_shape=args.scan_shape, particles=args.particles,
                            frames_per_position=args.frames_per_position,
                            electrons_per_position=args.electrons_per_position, seed=args.seed)
    out = simulate_scan(args.dataset, args.out, settings)
    print(f"simulate scan: wrote {out} ({args.particles} particles, {args.scan_shape[0]}x{args.scan_shape[1]} scan)")
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



if __name__ == "__main__":
    sys.exit(main())
