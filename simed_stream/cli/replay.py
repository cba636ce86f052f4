"""A recorded capture streamed through the live pipeline by a simulated detector: `simed replay`
(`--source` picks the detector's format), the demo, `tools/bench_pipeline.py` and the live tests
use it. With a vendor source the overview goes as a file into a watched folder, as at the
microscope, and the scan, optics and affine come from the capture."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from simed_stream.errors import SimedError
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import LiveSettings


def replay_capture(capture: Path, settings: LiveSettings, rate: str | float = "recorded", connect: str | None = None,
                   on_status: Callable[[dict], None] | None = None,
                   run: Callable[[LivePipeline], object] | None = None,
                   truth_of: Callable[[str], dict | None] | None = None) -> LivePipeline:
    """Stream `capture` through the live pipeline; returns the pipeline (results, status) when done.

    A paced simulated detector replays it on a private local socket, unless `connect` names a
    detector already streaming it. `run(pipeline)` runs the pipeline (default `pipeline.run()`;
    the CLI passes one that maps Ctrl-C to a clean stop). The pipeline stops after
    `settings.max_series` series, by default the capture's one."""
    from simed_stream.capture_replay import capture_series

    if not capture.is_file():
        raise SimedError(f"capture {capture} does not exist")
    try:
        source = capture_series(capture)
    except (ValueError, OSError, KeyError) as error:
        raise SimedError(f"cannot replay {capture}: {error}") from None
    run = run or (lambda p: p.run())
    with tempfile.TemporaryDirectory(prefix="simed-replay-") as tmp:
        detector, endpoint = (None, connect) if connect is not None else _detector(settings, source, rate, Path(tmp))
        update = {"data_endpoint": endpoint, "max_series": settings.max_series or 1}
        if settings.source != "simed":
            update |= vendor_settings(settings, capture, source, Path(tmp) / "overviews")
        pipeline = LivePipeline(settings.model_copy(update=update), on_status=on_status, truth_of=truth_of)
        if detector is None:
            run(pipeline)
            return pipeline
        failure = []

        def stream():
            try:
                detector(source)
            except Exception as error:  # reported below; the pipeline times the series out
                failure.append(error)

        thread = threading.Thread(target=stream, name="simed-replay-detector", daemon=True)
        thread.start()
        run(pipeline)
        thread.join(timeout=30)
        if failure:
            raise SimedError(f"the replaying detector failed: {failure[0]}")
        return pipeline


def _detector(settings: LiveSettings, source, rate, tmp: Path):
    """(stream(source), endpoint) of a simulated detector of `settings.source` on a private socket."""
    if settings.source == "simed":
        from simed_stream.detectors.simed.fake import FakeDetector

        endpoint = f"ipc://{tmp}/data.sock"

        def stream(source):
            with FakeDetector(endpoint, control_endpoint=None, rate_fps=rate,
                              max_message_bytes=settings.max_message_bytes) as detector:
                detector.run([source])

        return stream, endpoint
    from simed_stream.detectors.simulators import make_simulator

    endpoint = f"ipc://{tmp}/data.sock" if settings.source == "dectris" else "tcp://127.0.0.1:0"
    fps = 1.0 / source.frame_interval_s if rate == "recorded" and source.frame_interval_s > 0 else rate
    simulator = make_simulator(settings.source, endpoint, fps, tmp / "overviews",
                               byte_order=settings.serval.byte_order)
    if settings.source != "dectris":
        endpoint = f"tcp://127.0.0.1:{simulator.port}"

    def stream(source):
        try:
            simulator.stream(source)
        finally:
            simulator.close()

    return stream, endpoint


def vendor_settings(settings: LiveSettings, capture: Path, source, overview_dir: Path) -> dict:
    """What a detector without positions does not send, from the capture: the scan, the optics,
    the overview's pixel size and affine; the overview comes as a file into `overview_dir`."""
    scan = source.start_fields["scan"]
    if scan["pattern"] not in ("raster", "serpentine"):
        raise SimedError(f"a {scan['pattern']} scan cannot be replayed as {settings.source}: its frames carry "
                         "no positions")
    overview_dir.mkdir(parents=True, exist_ok=True)
    optics = {k: v for k, v in source.start_fields.get("optics", {}).items() if k in type(settings.optics).model_fields}
    overview = {"dir": overview_dir}
    from simed_stream.capture import CaptureReader

    with CaptureReader(capture) as reader:
        first = reader.first_overview()
    if first is not None:
        header = first[1]
        overview |= {"affine": tuple(v for row in header["affine_scan_to_overview"] for v in row),
                     "pixel_size_A": header["pixel_size_A"]}
    mask = None
    if source.pixel_mask is not None and settings.source != "dectris":  # Merlin and Serval streams carry none
        mask = overview_dir.parent / "pixel_mask.npy"
        np.save(mask, source.pixel_mask)
    return {"pixel_mask": mask,
            "scan": settings.scan.model_copy(update={"shape": tuple(scan["nav_shape"]), "pattern": scan["pattern"],
                                                     "frames_per_position": scan["frames_per_position"]}),
            "optics": settings.optics.model_copy(update=optics),
            "overview": settings.overview.model_copy(update=overview)}

