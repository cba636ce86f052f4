"""`simed receive`: the receiver alone, series into captures, until Ctrl-C or --series are done."""

from __future__ import annotations

import json
import logging
import sys
import time

from pydantic import Field

from simed_stream.errors import SimedError
from simed_stream.ingest import ReceiverListener, ReceiverSettings, SeriesSummary

log = logging.getLogger("simed")


class ReceiveCommand(ReceiverSettings):
    series: int = Field(0, ge=0, description="stop after this many series (0: run until Ctrl-C)")
    status_interval_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="seconds between status lines")


class _PrintClosed(ReceiverListener):
    def series_closed(self, summary: SeriesSummary) -> None:
        print(f"series {summary.series_id} closed ({summary.end_status}) -> {summary.path}: "
              f"{json.dumps(summary.accounting)}" + "".join(f"\n  note: {note}" for note in summary.notes), flush=True)


def receive(settings: ReceiveCommand) -> int:
    """Connect to a detector's data socket, validate and account for every frame, sum and centre
    each scan position and write one capture per series, until stopped (Ctrl-C) or --series are
    done."""
    import zmq

    from simed_stream.ingest import Receiver

    try:
        settings.capture_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SimedError(f"cannot create {settings.capture_dir}: {error.strerror}") from None
    receiver = Receiver(settings, _PrintClosed())
    try:
        receiver.start()
    except (zmq.ZMQError, OSError) as error:
        raise SimedError(f"cannot connect to {settings.data_endpoint} ({settings.source}): {error}") from None
    with receiver:  # already started: __enter__ does not start it again
        try:
            while not settings.series or len(receiver.closed) < settings.series:
                time.sleep(settings.status_interval_s)
                if receiver.error is not None:
                    raise SimedError(f"receiver failed: {receiver.error}")
                status = receiver.status()
                log.info("%.0f frames/s, %d received, %d rejected messages, queue %d/%d, lag %.2f s, open: %s",
                         status["frames_per_s"], status["frames_received"], status["rejected_messages"],
                         status["queue_depth"], status["queue_capacity"], status["lag_s"],
                         ", ".join(status["open_series"]) or "-")
        except KeyboardInterrupt:
            print("receive: stopping; open series are closed with what was received", file=sys.stderr)
    return 0
