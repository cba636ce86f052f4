"""`simed detector`: a simulated detector streaming a capture or a synthetic scan, in
simed-stream/1 (default) or, with --source, as a DECTRIS, Merlin or Serval detector would."""

from __future__ import annotations

import logging
from pathlib import Path

from simed_stream.cli.common import rate, shape
from simed_stream.cli.options import add_fields, settings_from_args
from simed_stream.errors import SimedError
from simed_stream.links import LinkSecurity


def add(commands) -> None:
    from simed_stream.protocol import DEFAULT_CONTROL_ENDPOINT, DEFAULT_DATA_ENDPOINT

    detector = commands.add_parser(
        "detector", help="fake ASI/JEOL detector: stream a capture or a synthetic scan over simed-stream/1",
        description="Stream a capture file (verbatim, bit for bit) or a synthetic scan as a live detector would: "
        "PUSH data socket bound on loopback, REP control socket answering status/arm/abort.",
    )
    source = detector.add_mutually_exclusive_group(required=True)
    source.add_argument("--capture", type=Path, metavar="FILE.h5", help="capture written by `simed receive`")
    source.add_argument("--synthetic", action="store_true", help="a synthetic scan (direct beam, descan drift, hot pixels)")
    detector.add_argument("--source", choices=["simed", "dectris", "merlin", "serval"], default="simed",
                          help="the wire format (default simed-stream/1); dectris, merlin and serval send no positions")
    detector.add_argument("--data", default=None, help=f"data endpoint to bind (default {DEFAULT_DATA_ENDPOINT}; "
                          "merlin tcp://127.0.0.1:6342, serval tcp://127.0.0.1:8088 or tcp://connect@HOST:PORT)")
    detector.add_argument("--overview-dir", type=Path, default=None,
                          help="vendor sources: write the overview image there as an MRC file")
    detector.add_argument("--flyback-frames", type=int, default=0, help="vendor sources: frames per line's flyback")
    detector.add_argument("--start-frame", type=int, default=0, help="vendor sources: frames before the scan")
    detector.add_argument("--dectris-version", type=int, choices=[1, 2], default=1, help="DECTRIS stream v1 or v2")
    detector.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4", help="DECTRIS frames")
    detector.add_argument("--byte-order", choices=["big", "little"], default="big", help="Serval pixels")
    detector.add_argument("--serval-variant", choices=["new", "old"], default="new", help="Serval header format")
    detector.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT,
                          help=f"control endpoint to bind, or 'none' (default {DEFAULT_CONTROL_ENDPOINT})")
    detector.add_argument("--rate", type=rate, default="recorded", metavar="FPS|recorded|max",
                          help="frames per second, the recorded timing (default) or as fast as possible")
    detector.add_argument("--loop", action="store_true", help="repeat the series until stopped (new series ids)")
    detector.add_argument("--faults", default="", metavar="SPEC",
                          help="e.g. drop=0.01,source_drop=0.01,reorder=0.01,duplicate=0.01,truncate=0.01,garbage=0.01,"
                          "wrong_shape=0.01,wrong_dtype=0.01,oversize=1,disconnect=1,no_end,late_overview=2,no_overview")
    detector.add_argument("--seed", type=int, default=0, help="seed for faults and synthetic data")
    detector.add_argument("--wait-arm", action="store_true", help="start each series only on an 'arm' command")
    detector.add_argument("--nav-shape", type=shape, default=(32, 32), metavar="HxW", help="synthetic scan positions")
    detector.add_argument("--sig-shape", type=shape, default=(256, 256), metavar="HxW", help="synthetic frame size")
    detector.add_argument("--frames-per-position", type=int, default=4, help="synthetic sub-frames per position")
    detector.add_argument("--batch-frames", type=int, default=32, help="synthetic frames per message")
    detector.add_argument("--series-id", default=None, help="synthetic series id (default: time-based)")
    detector.add_argument("--max-message-bytes", type=int, default=None,
                          help="the receiver's message size limit (for the oversize fault)")
    add_fields(detector.add_argument_group("keys (simed source: CURVE on both sockets; docs/security.md)"),
               LinkSecurity)
    detector.set_defaults(handler=_detector)


def _detector(args) -> int:
    import time

    import zmq

    from simed_stream.protocol import DEFAULT_MAX_MESSAGE_BYTES
    from simed_stream.capture_replay import capture_series
    from simed_stream.detectors.simed.fake import FakeDetector, FaultPlan
    from simulator.synthetic import synthetic_series

    try:
        faults = FaultPlan.parse(args.faults)
    except ValueError as error:
        raise SimedError(f"--faults: {error}") from None
    from simed_stream.detectors.settings import DEFAULT_ENDPOINTS

    args.data = args.data or DEFAULT_ENDPOINTS[args.source]
    security = settings_from_args(LinkSecurity, args)
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
    if args.source != "simed":
        return _vendor_detector(args, make, security)
    control = None if args.control == "none" else args.control
    detector = FakeDetector(args.data, control, rate_fps=args.rate, faults=faults, seed=args.seed,
                            max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
                            wait_for_arm=args.wait_arm, security=security)
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


def _vendor_detector(args, make, security: LinkSecurity) -> int:
    import zmq

    from simed_stream import links
    from simed_stream.detectors.simulators import make_simulator

    if security.secret_key or security.server_key or security.authorized_keys:
        raise SimedError(f"the {args.source} stream has no keys (its vendor's own protocol): give none")
    links.allow_plain(args.data, security, "connect to" if "connect@" in args.data else "bind")

    try:
        simulator = make_simulator(args.source, args.data, args.rate, args.overview_dir, args.flyback_frames,
                                   args.start_frame, args.dectris_version, args.compression, args.byte_order,
                                   args.serval_variant)
    except (OSError, zmq.ZMQError) as error:
        raise SimedError(f"cannot bind {args.data}: {error}") from None
    logging.getLogger("simed").info("%s detector on %s", args.source, args.data)
    try:
        simulator.run([make], loop=args.loop)
    except (OSError, ValueError, zmq.ZMQError) as error:
        raise SimedError(f"{args.source} detector: {error}") from None
    finally:
        simulator.close()
    last = simulator.last
    print(f"detector: {simulator.series_count} series, last {last.series_id if last else '-'}: "
          f"{len(last.sent) if last else 0} frames sent ({args.source})")
    return 0

