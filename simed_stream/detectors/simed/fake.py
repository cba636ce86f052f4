"""`simed detector`: a fake scan detector speaking simed-stream/1 (the simulator of this protocol).

It binds a ZeroMQ PUSH data socket (as real detectors do; receivers connect) and a REP control
socket, and streams either a capture file (verbatim: the recorded headers, the recorded pixels,
so a replay reproduces the original stream bit for bit) or a synthetic scan (direct beam with a
slow descan drift, Poisson counts, hot pixels). Frames are paced at the recorded or a requested
rate, or sent as fast as possible. Faults can be injected, each seeded and reported, so tests
know exactly which frames went where.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import zmq

from simed_stream import links
from simed_stream.protocol import (DEFAULT_CONTROL_ENDPOINT, DEFAULT_DATA_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES,
                                   encode_frames, encode_heartbeat, encode_overview, encode_series_end,
                                   encode_series_start)
from simed_stream.detectors.series_source import SeriesSource
from simed_stream.detectors.simed.faults import FaultInjector, FaultPlan, FaultReport
from simed_stream.detectors.simed.sockets import ControlServer, DataSocket

__all__ = ["FakeDetector", "FaultPlan", "FaultReport", "SeriesSource"]
log = logging.getLogger(__name__)


@dataclass
class _SeriesProgress:
    """One series on its way out: frames counted, what the faults hold back, how it ends."""

    series_id: str
    verbatim: bool  # the recorded headers as they are (a replay without faults)
    oversize_left: int
    disconnect_left: int
    sent: int = 0
    dropped: int = 0
    held: list | None = None  # a frames message held back to reorder
    late_overview: object = None  # a builder of the overview to send after the end
    status: str = "complete"
    end_recorded: bytes | None = None


class FakeDetector:
    """Streams series on a PUSH socket; answers `status`, `arm` and `abort` on a REP socket."""

    def __init__(self, data_endpoint: str = DEFAULT_DATA_ENDPOINT, control_endpoint: str | None = DEFAULT_CONTROL_ENDPOINT,
                 rate_fps: float | str = "recorded", faults: FaultPlan = FaultPlan(), seed: int = 0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, send_timeout_s: float = 2.0,
                 wait_for_arm: bool = False, heartbeat_s: float = 1.0, peer_timeout_s: float = 30.0,
                 security: links.LinkSecurity | None = None):
        self.data_endpoint = data_endpoint
        self.security = security  # with keys: CURVE on both sockets, receivers from authorized_keys only
        self.control_endpoint = control_endpoint
        self.rate_fps = rate_fps
        self.faults = faults
        self.injector = FaultInjector(faults, seed, max_message_bytes)
        self.report = self.injector.report
        self.wait_for_arm = wait_for_arm
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        # own context: terminating it on exit waits until queued messages are sent, before Python
        # frees the zero-copy buffers they point into
        self.context = zmq.Context()
        self.data = DataSocket(self.context, data_endpoint, send_timeout_s, security)
        self.msg_seq = 0
        self.state = "idle"
        self._armed = threading.Event()
        self._abort = threading.Event()
        self._stop = threading.Event()
        self._status_lock = threading.Lock()
        self._progress = {"series_id": None, "frames_sent": 0, "frames_dropped_at_source": 0, "series_done": 0}
        self._control: ControlServer | None = None

    # -- sockets
    def __enter__(self) -> "FakeDetector":
        try:
            self.data.guard = links.server_guard(self.context, self.security)
            self.data.bind()
            if self.control_endpoint:
                self._control = ControlServer(self.context, self.control_endpoint, self._control_status,
                                              self._armed.set, self._control_abort, self.security, self.data.guard)
        except BaseException:
            self.data.close(0)
            self._stop_guard()
            self.context.term()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.data.close(linger_s=10.0)
        if self._control:
            self._control.close()
        self._stop_guard()
        self.context.term()

    def _stop_guard(self) -> None:
        if self.data.guard is not None:  # its socket lives in our context: before terminating it
            self.data.guard.stop()
            self.data.guard = None

    def wait_for_peer(self, timeout_s: float) -> bool:
        return self.data.wait_for_peer(timeout_s, self._stop)

    def _next_seq(self) -> int:
        seq = self.msg_seq
        self.msg_seq += 1
        return seq

    # -- control
    def _control_status(self) -> dict:
        return {"state": self.state, **self.status()}

    def _control_abort(self) -> str:
        self._abort.set()
        return "aborting" if self.state == "acquiring" else self.state

    def status(self) -> dict:
        with self._status_lock:
            return dict(self._progress)

    def _update(self, run: _SeriesProgress, done: bool = False) -> None:
        with self._status_lock:
            self._progress.update(frames_sent=run.sent, frames_dropped_at_source=run.dropped)
            self._progress["series_done"] += int(done)

    # -- streaming
    def run(self, sources, loop: bool = False) -> FaultReport:
        """Stream every series (again and again with `loop`); returns what the faults did."""
        sources = list(sources) if loop else sources
        repeat = 0
        while True:
            for make_source in sources:
                if self._stop.is_set() or not self._wait_for_arm():
                    return self.report
                if not self.wait_for_peer(self.peer_timeout_s):
                    raise TimeoutError(f"no receiver connected to {self.data_endpoint} within {self.peer_timeout_s} s")
                source = make_source() if callable(make_source) else make_source
                self._stream(source, f"-r{repeat}" if repeat else "")
            repeat += 1
            if not loop:
                self.state = "idle"
                return self.report

    def _wait_for_arm(self) -> bool:
        """With wait_for_arm: heartbeats until armed; False when stopped meanwhile."""
        if not self.wait_for_arm:
            return True
        self.state = "waiting for arm"
        while not self._armed.wait(self.heartbeat_s):
            self.data.send(encode_heartbeat(None, self._next_seq(), time.time_ns(), self.state), 0.1)
            if self._stop.is_set():
                return False
        self._armed.clear()
        return True

    def _encode(self, recorded: bytes | None, build, verbatim: bool) -> list:
        """The recorded header verbatim when replaying unchanged, else a fresh one with our msg_seq."""
        if recorded is not None and verbatim:
            seq = json.loads(recorded)["msg_seq"]
            self.msg_seq = seq + 1
            return [recorded, *build(seq)[1:]]
        return build(self._next_seq())

    def _stream(self, source: SeriesSource, loop_suffix: str = "") -> None:
        faults = self.faults
        run = _SeriesProgress(source.series_id + loop_suffix, not loop_suffix and not faults.touches_headers,
                              faults.counts.get("oversize", 0), faults.counts.get("disconnect", 0))
        self.state = "acquiring"
        self._abort.clear()
        self._update(run)
        with self._status_lock:
            self._progress["series_id"] = run.series_id
        start_time = time.monotonic()
        for index, (htype, recorded, payload) in enumerate(source.messages):
            if htype == "series_start":
                fields = dict(payload) | ({"unique_id": uuid.uuid4().hex} if loop_suffix else {})
                parts = self._encode(recorded, lambda seq: encode_series_start(run.series_id, seq, fields,
                                                                               source.pixel_mask), run.verbatim)
                if not self.data.send(parts, 10.0):
                    raise TimeoutError("no receiver took series_start")
            elif htype == "overview_image":
                self._overview(run, recorded, payload)
            elif htype == "series_end":
                if isinstance(payload, dict):
                    run.status, run.end_recorded = payload["status"], recorded
                break
            elif htype == "frames":
                if self._abort.is_set() or self._stop.is_set():
                    run.status = "aborted"
                    break
                _pace(self.rate_fps, source, index, run.sent + run.dropped, start_time)
                self._frames(run, recorded, payload, source.start_fields["scan"]["frames_expected"])
        self._end(run)

    def _overview(self, run: _SeriesProgress, recorded: bytes | None, o: dict) -> None:
        if "no_overview" in self.faults.flags:
            self.report.events.append("overview withheld")
            return

        def build(seq):
            return encode_overview(run.series_id, seq, o["overview_id"], o["image"], o["pixel_size_A"], o["affine"],
                                   o["acquired"])

        if self.faults.late_overview_s is not None:
            run.late_overview = build
        else:
            self.data.send(self._encode(recorded, build, run.verbatim), 10.0)

    def _frames(self, run: _SeriesProgress, recorded: bytes | None, payload, expected: int) -> None:
        ids, scan_yx, stamps, pixels = payload
        parts = self._encode(recorded, lambda seq: encode_frames(run.series_id, seq, ids, scan_yx, stamps, pixels),
                             run.verbatim)
        id_list = ids.astype(np.int64).tolist()
        fault = self.injector.draw()
        if run.oversize_left and run.sent + run.dropped >= expected // 3:
            run.oversize_left, fault = run.oversize_left - 1, "oversize"
        if run.disconnect_left and run.sent + run.dropped >= expected // 2:
            run.disconnect_left -= 1
            self.report.events.append(f"disconnect before frame {id_list[0]}")
            self.data.close(linger_s=5.0)
            time.sleep(0.3)
            self.data.bind()
            self.wait_for_peer(self.peer_timeout_s)
        outgoing = self.injector.apply(fault, parts, pixels, id_list)
        if fault == "reorder" and run.held is None:
            run.held = outgoing
            return
        if run.held is not None:
            outgoing, run.held = outgoing + run.held, None
        self._deliver(run, outgoing)
        self._update(run)

    def _deliver(self, run: _SeriesProgress, outgoing: list) -> None:
        sent, dropped = self.injector.deliver(outgoing, self.data.send)
        run.sent, run.dropped = run.sent + sent, run.dropped + dropped

    def _end(self, run: _SeriesProgress) -> None:
        if run.held is not None:
            self._deliver(run, run.held)
        if "no_end" in self.faults.flags:
            self.report.events.append("series_end withheld")
        else:
            self.data.send(self._encode(run.end_recorded, lambda seq: encode_series_end(
                run.series_id, seq, run.status, run.sent, run.dropped), run.verbatim), 10.0)
        if run.late_overview is not None:
            time.sleep(self.faults.late_overview_s)
            self.data.send(run.late_overview(self._next_seq()), 10.0)
            self.report.events.append(f"overview sent {self.faults.late_overview_s:g} s after the series ended")
        self._update(run, done=True)
        self.state = "idle"


def _pace(rate_fps: float | str, source: SeriesSource, index: int, frames_done: int, start_time: float) -> None:
    """Sleep until message `index` is due: at the recorded times, at `rate_fps`, or never ("max")."""
    if rate_fps == "max":
        return
    times = source.recorded_times_ns
    if rate_fps == "recorded" and times is not None and index < len(times):
        target = start_time + (int(times[index]) - int(times[0])) / 1e9
    elif rate_fps == "recorded":
        target = start_time + frames_done * source.frame_interval_s
    else:
        target = start_time + frames_done / float(rate_fps)
    delay = target - time.monotonic()
    if delay > 0:
        time.sleep(delay)
