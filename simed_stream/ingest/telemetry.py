"""The receiver's counters and rates, written by the processing thread and read by any."""

from __future__ import annotations

import logging
import threading
import time

from simed_stream.protocol import ProtocolError

log = logging.getLogger("simed_stream.ingest")

COUNTERS = ("messages", "rejected_messages", "frames_received", "frames_rejected", "duplicates", "msg_seq_gaps",
            "heartbeats", "bytes", "internal_errors", "capture_failures")
_RATE_WINDOW_S = 2.0
_LOGGED_REJECTIONS = 20  # then one in 100: a flood of bad messages must not flood the log


class IngestTelemetry:
    def __init__(self):
        self.lock = threading.Lock()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.lag_s = 0.0  # behind the detector: now minus the receipt time of the item being handled
        self.last_internal_error: str | None = None
        self.last_capture_failure: str | None = None
        self._rate_window: list[tuple[float, int]] = []  # (monotonic s, frames received so far)
        self._rejections = 0
        self._last_seq: int | None = None

    def count(self, **increments: int) -> None:
        with self.lock:
            for name, value in increments.items():
                self.counters[name] += value

    def check_sequence(self, seq: int) -> None:
        """msg_seq counts +1 per message of a detector connection: a jump is a loss in transit."""
        last = self._last_seq
        if last is not None and seq > last + 1:
            self.count(msg_seq_gaps=1)
            log.warning("msg_seq jumped from %d to %d: %d message(s) lost or reordered in transit",
                        last, seq, seq - last - 1)
        elif last is not None and seq == 0:
            log.info("msg_seq restarted at 0: detector restarted or reconnected")
        self._last_seq = seq if last is None or seq > last or seq == 0 else last

    def frames_received(self, frames: int, nbytes: int) -> None:
        with self.lock:
            self.counters["frames_received"] += frames
            self.counters["bytes"] += nbytes
            self._rate_window.append((time.monotonic(), self.counters["frames_received"]))
            if len(self._rate_window) > 512:
                del self._rate_window[:256]

    def internal_error(self, error: BaseException) -> None:
        self.count(internal_errors=1)
        self.last_internal_error = f"{error.__class__.__name__}: {error}"

    def capture_failed(self, series_id: str, reason: str) -> None:
        self.count(capture_failures=1)
        self.last_capture_failure = f"series {series_id}: {reason}"
        log.error("series %s: its capture stopped (%s); the series goes on, received and accounted, its frames "
                  "from here on are not stored", series_id, reason)

    def rejected(self, error: ProtocolError, frames: int) -> None:
        self.count(rejected_messages=1, frames_rejected=frames)
        self._rejections += 1
        if self._rejections <= _LOGGED_REJECTIONS or self._rejections % 100 == 0:
            log.warning("rejected message (%d so far): %s%s", self._rejections, error.reason,
                        f" [{frames} frame(s) of series {error.series_id}]" if frames else "")

    def frames_per_s(self) -> float:
        now = time.monotonic()
        with self.lock:
            window = [(t, n) for t, n in self._rate_window if now - t < _RATE_WINDOW_S]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return 0.0
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    def snapshot(self) -> dict:
        with self.lock:
            counters = dict(self.counters)
        return dict(counters, lag_s=round(self.lag_s, 3), frames_per_s=round(self.frames_per_s(), 1),
                    last_capture_failure=self.last_capture_failure)
