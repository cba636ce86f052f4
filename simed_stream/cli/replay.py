"""A recorded capture streamed through the live pipeline by the simulator's fake detector:
`simed replay`, the demo, `tools/bench_pipeline.py` and the live tests use it."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Callable

from simed_stream.errors import SimedError
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import LiveSettings


def replay_capture(capture: Path, settings: LiveSettings, rate: str | float = "recorded", connect: str | None = None,
                   on_status: Callable[[dict], None] | None = None,
                   run: Callable[[LivePipeline], object] | None = None,
                   truth_of: Callable[[str], dict | None] | None = None) -> LivePipeline:
    """Stream `capture` through the live pipeline; returns the pipeline (results, status) when done.

    A paced fake detector replays it on a private local socket, unless `connect` names a
    detector already streaming it. `run(pipeline)` runs the pipeline (default `pipeline.run()`;
    the CLI passes one that maps Ctrl-C to a clean stop). The pipeline stops after
    `settings.max_series` series, by default the capture's one."""
    from simed_stream.capture_replay import capture_series
    from simed_stream.detectors.simed.fake import FakeDetector

    if not capture.is_file():
        raise SimedError(f"capture {capture} does not exist")
    try:
        source = capture_series(capture)
    except (ValueError, OSError, KeyError) as error:
        raise SimedError(f"cannot replay {capture}: {error}") from None
    run = run or (lambda p: p.run())
    with tempfile.TemporaryDirectory(prefix="simed-replay-") as tmp:
        endpoint = connect or f"ipc://{tmp}/data.sock"
        settings = settings.model_copy(update={"data_endpoint": endpoint, "max_series": settings.max_series or 1})
        pipeline = LivePipeline(settings, on_status=on_status, truth_of=truth_of)
        if connect is not None:
            run(pipeline)
            return pipeline
        failure = []

        def stream():
            try:
                with FakeDetector(endpoint, control_endpoint=None, rate_fps=rate,
                                  max_message_bytes=settings.max_message_bytes) as detector:
                    detector.run([source])
            except Exception as error:  # reported below; the pipeline times the series out
                failure.append(error)

        thread = threading.Thread(target=stream, name="simed-replay-detector", daemon=True)
        thread.start()
        run(pipeline)
        thread.join(timeout=30)
        if failure:
            raise SimedError(f"the replaying detector failed: {failure[0]}")
        return pipeline
