"""`simed run` (the live pipeline beside the microscope) and `simed replay` (a capture through it)."""

from __future__ import annotations

import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, PositiveFloat, model_validator

from simed_stream.cli.common import print_status
from simed_stream.config import cli
from simed_stream.live.settings import LiveSettings


class ReplayCommand(LiveSettings):
    capture: Path = Field(description="the capture to replay", json_schema_extra=cli(positional=True))
    rate: Union[Literal["recorded", "max"], PositiveFloat] = Field(
        "recorded", description="frames per second, the recorded timing or as fast as possible")
    data_endpoint: Optional[str] = Field(None, description="connect to a detector already replaying the capture "
                                         "(default: start one on a private local socket)",
                                         json_schema_extra=cli("--data-endpoint", "--data"))
    overview_timeout_s: float = Field(5.0, gt=0, allow_inf_nan=False,
                                      description="after series_end, wait this long for the overview")

    @model_validator(mode="after")
    def _scan_for_positionless_sources(self) -> "ReplayCommand":
        return self  # a replay takes the scan, optics and overview calibration from the capture


def run(settings: LiveSettings) -> int:
    """Connect to the detector's data socket; ingest and capture every series, pick, match and
    phase its particles as they come, and keep a RELION-ready stack per series, until Ctrl-C.
    Writes OUT/captures/, OUT/<series>/ and OUT/status.json (about once a second). Settings: the
    options below, or the same keys in --config (see docs/live.md)."""
    from simed_stream.live.pipeline import LivePipeline

    return run_live(LivePipeline(settings, on_status=print_status))


def run_live(pipeline) -> int:
    """Run until done or Ctrl-C (a clean stop that keeps everything); print each series' outcome.
    With `web` in its settings the live page is served meanwhile (and `web_hold_s` after)."""
    from simed_stream.web.launch import hold, serving

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        try:
            page = stack.enter_context(serving(pipeline.view, pipeline.settings, say))
        except BaseException:  # e.g. the port is taken: the run never starts, its workers must not stay
            if pipeline.fanout is not None:
                pipeline.fanout.close()
            raise
        previous = signal.signal(signal.SIGINT, lambda *_: pipeline.stop())
        try:
            results = pipeline.run()
        finally:
            signal.signal(signal.SIGINT, previous)
        print(file=sys.stderr)
        for r in results:
            print(f"series {r.series_id}: {r.status}; {r.picks} picks, {r.phased} phased"
                  + "".join(f", {n} flagged ({why})" for why, n in r.flagged.items()) + f" -> {r.out_dir}")
        print(f"status: {pipeline.out_dir / 'status.json'}", flush=True)
        hold(page, pipeline.settings.web_hold_s, say)
    return 0 if results and all(r.status == "phased" for r in results) and not pipeline.errors else 1


def replay(command: ReplayCommand) -> int:
    """Start a paced simulated detector on the capture (on a private local socket; --source picks
    its format: simed-stream/1, DECTRIS, Merlin or Serval, the overview then as a file) and run
    the live pipeline on it; or, with --data, connect to a detector that is already replaying it."""
    from simed_stream.cli.replay import replay_capture

    pipeline = replay_capture(command.capture, command, command.rate, command.data_endpoint, print_status, run_live)
    return 0 if pipeline.results and all(r.status == "phased" for r in pipeline.results) else 1
