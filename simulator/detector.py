"""`simed detector`: a fake ASI Cheetah / JEOL scan detector speaking simed-stream/1.

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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import zmq

from simed_stream.protocol import (DEFAULT_CONTROL_ENDPOINT, DEFAULT_DATA_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES,
                                   encode_frames, encode_header, encode_heartbeat, encode_overview,
                                   encode_series_end, encode_series_start, scan_order)

log = logging.getLogger(__name__)

#: Faults applied per frames message with a probability, and faults given as a count or a flag.
PER_MESSAGE_FAULTS = ("drop", "source_drop", "reorder", "duplicate", "truncate", "garbage", "wrong_shape",
                      "wrong_dtype")
COUNTED_FAULTS = ("oversize", "disconnect")
FLAG_FAULTS = ("no_end", "no_overview")
TIMED_FAULTS = ("late_overview",)


@dataclass(frozen=True)
class FaultPlan:
    """Parsed `--faults`, e.g. "drop=0.01,duplicate=0.02,oversize=1,disconnect=1,late_overview=2,no_end"."""

    probabilities: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    late_overview_s: float | None = None

    @property
    def touches_headers(self) -> bool:
        """Faults that add, remove or hold back messages make recorded msg_seq values wrong."""
        return bool(self.probabilities or self.counts or self.flags or self.late_overview_s is not None)

    @classmethod
    def parse(cls, spec: str | None) -> "FaultPlan":
        probabilities, counts, flags, late = {}, {}, set(), None
        allowed = PER_MESSAGE_FAULTS + COUNTED_FAULTS + FLAG_FAULTS + TIMED_FAULTS
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, _, value = item.partition("=")
            if name not in allowed:
                raise ValueError(f"unknown fault {name!r}; allowed: {', '.join(allowed)}")
            try:
                if name in PER_MESSAGE_FAULTS:
                    probabilities[name] = float(value)
                    if not 0 <= probabilities[name] <= 1:
                        raise ValueError
                elif name in COUNTED_FAULTS:
                    counts[name] = int(value or 1)
                elif name in TIMED_FAULTS:
                    late = float(value or 2.0)
                else:
                    if value:
                        raise ValueError
                    flags.add(name)
            except ValueError:
                raise ValueError(f"bad value {value!r} for fault {name!r}") from None
        return cls(probabilities, counts, frozenset(flags), late)


@dataclass
class FaultReport:
    """What the detector did, frame by frame, so a test can check the receiver's accounting."""

    frames_sent_ok: list[int] = field(default_factory=list)
    frames_lost_in_transit: list[int] = field(default_factory=list)
    frames_dropped_at_source: list[int] = field(default_factory=list)
    frames_in_bad_messages: list[int] = field(default_factory=list)  # attributable: the receiver can reject them
    frames_in_garbage: list[int] = field(default_factory=list)  # unattributable: the receiver sees them missing
    frames_duplicated: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@dataclass
class SeriesSource:
    """One series in sending order: `messages` yields (htype, recorded header or None, payload);
    payload is the series_start fields, (ids, scan_yx, t_ns, pixels) for frames, the overview
    dict for overview_image, and the recorded header dict (or None) for series_end."""

    series_id: str
    start_fields: dict
    pixel_mask: np.ndarray | None
    messages: Iterator[tuple[str, bytes | None, object]]
    frame_interval_s: float
    recorded_times_ns: np.ndarray | None = None


# ---------------------------------------------------------------- sources

def synthetic_series(series_id: str, nav_shape=(16, 16), frames_per_position: int = 4, sig_shape=(256, 256),
                     dwell_s: float = 5e-4, batch_frames: int = 32, seed: int = 0, beam_counts: float = 2e5,
                     background_counts: float = 0.02, hot_pixels: int = 4, drift_px=(2.0, 3.0),
                     pattern: str = "raster") -> SeriesSource:
    """A synthetic scan: a direct-beam disc drifting linearly across the scan (descan), Poisson
    counts clipped to 12 bits, a few hot pixels. Pixels come from a small pool of pre-computed
    frames (one per integer drift offset and sub-frame) so the generator outruns any receiver."""
    rng = np.random.default_rng(seed)
    h, w = sig_shape
    ny, nx = nav_shape
    order = scan_order(nav_shape, pattern)
    hot = rng.integers(0, [h, w], size=(hot_pixels, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    pool: dict[tuple[int, int, int], np.ndarray] = {}

    def frame(dy: int, dx: int, sub: int) -> np.ndarray:
        key = (dy, dx, sub % 4)
        if key not in pool:
            cy, cx = h // 2 + dy, w // 2 + dx
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).astype(np.float64)
            mean = background_counts + beam_counts * disc / disc.sum()
            pixels = np.minimum(rng.poisson(mean), 4095)
            pixels[hot[:, 0], hot[:, 1]] = 4095
            pool[key] = pixels.astype("<u2")
        return pool[key]

    def offsets(y: int, x: int) -> tuple[int, int]:
        return int(round(drift_px[0] * y / max(ny - 1, 1))), int(round(drift_px[1] * x / max(nx - 1, 1)))

    n = ny * nx * frames_per_position
    start_fields = {
        "unique_id": uuid.uuid4().hex,
        "detector": {"model": "ASI Cheetah (simulated)", "sig_shape": [h, w], "dtype": "<u2", "bit_depth": 12,
                     "pixel_pitch_um": 55.0},
        "scan": {"nav_shape": [ny, nx], "pattern": pattern, "frames_per_position": frames_per_position,
                 "dwell_s": dwell_s, "step_A": 20.0, "rotation_deg": 0.0, "frames_expected": n},
        "optics": {"energy_eV": 200e3, "camera_length_mm": 500.0, "convergence_mrad": 0.05, "mrad_per_px": 0.179},
        "microscope": {"model": "JEOL (simulated)"},
        "trigger_mode": "internal", "encoding": "raw", "user_data": {"synthetic": True, "seed": seed},
    }
    cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def batches():
        t0 = time.time_ns()
        for first in range(0, n, batch_frames):
            ids = np.arange(first, min(first + batch_frames, n), dtype=np.uint64)
            positions = order[ids.astype(np.int64) // frames_per_position]
            keys = tuple(offsets(int(y), int(x)) + (int(i) % frames_per_position,) for (y, x), i in zip(positions, ids))
            pixels = cache.get(keys)
            if pixels is None:
                pixels = np.stack([frame(*key) for key in keys])
                cache[keys] = pixels
                if len(cache) > 32:
                    cache.popitem(last=False)
            stamps = (t0 + ids * int(dwell_s / frames_per_position * 1e9)).astype(np.uint64)
            yield ids, positions.astype(np.int32), stamps, pixels

    overview_image = rng.normal(1.0, 0.1, size=(4 * ny, 4 * nx)).astype(np.float32)
    overview = {"overview_id": 0, "image": overview_image, "pixel_size_A": 5.0,
                "affine": [[4.0, 0.0, 1.5], [0.0, 4.0, 1.5]], "acquired": "after"}

    def messages():
        yield "series_start", None, start_fields
        for batch in batches():
            yield "frames", None, batch
        yield "overview_image", None, overview
        yield "series_end", None, None

    mask = np.zeros(sig_shape, np.uint8)  # the detector's own calibration knows its hot pixels
    mask[hot[:, 0], hot[:, 1]] = 1
    return SeriesSource(series_id, start_fields, mask, messages(), dwell_s / frames_per_position)


def capture_series(path: str | Path) -> SeriesSource:
    """Replay source for a capture: its recorded headers verbatim, its frames, its timing."""
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter the frames are stored with)

    from simed_stream.capture import CaptureReader

    reader = CaptureReader(path)
    f = reader.file
    headers = reader.message_headers()
    times = reader.message_times_ns()
    start_header = json.loads(headers[0])
    # the ids each frames message carried, in its own order (duplicates of earlier frames included)
    groups = {index: ids.astype(np.int64) for index, ids in enumerate(f["messages/frame_ids"][:]) if len(ids)}
    overviews = {}
    for dataset in f.get("overviews", {}).values():
        header = json.loads(dataset.attrs["header"])
        overviews[header["msg_seq"]] = {"overview_id": header["overview_id"], "image": dataset[:],
                                        "pixel_size_A": header["pixel_size_A"], "acquired": header["acquired"],
                                        "affine": header["affine_scan_to_overview"]}
    fields = {k: v for k, v in start_header.items() if k not in ("htype", "protocol", "series_id", "msg_seq", "pixel_mask")}
    mask = f["pixel_mask"][:] if "pixel_mask" in f else None
    dwell = start_header["scan"].get("dwell_s", 0.0) / max(1, start_header["scan"]["frames_per_position"])

    def messages():
        for index, recorded in enumerate(headers):
            header = json.loads(recorded)
            htype = header["htype"]
            if htype == "frames" and index in groups:
                ids = groups[index]  # in the message's own order
                sorted_ids = np.sort(ids)
                rank = np.searchsorted(sorted_ids, ids)
                yield htype, recorded, (ids.astype(np.uint64), f["scan_yx"][sorted_ids][rank],
                                        f["timestamp_ns"][sorted_ids][rank], f["frames"][sorted_ids][rank])
            elif htype == "overview_image" and header["msg_seq"] in overviews:
                yield htype, recorded, overviews[header["msg_seq"]]
            elif htype == "series_start":
                yield htype, recorded, fields
            elif htype == "series_end":
                yield htype, recorded, header

    return SeriesSource(start_header["series_id"], fields, mask, messages(), dwell, times)


# ---------------------------------------------------------------- the detector

class FakeDetector:
    """Streams series on a PUSH socket; answers `status`, `arm` and `abort` on a REP socket."""

    def __init__(self, data_endpoint: str = DEFAULT_DATA_ENDPOINT, control_endpoint: str | None = DEFAULT_CONTROL_ENDPOINT,
                 rate_fps: float | str = "recorded", faults: FaultPlan = FaultPlan(), seed: int = 0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, send_timeout_s: float = 2.0,
                 wait_for_arm: bool = False, heartbeat_s: float = 1.0, peer_timeout_s: float = 30.0):
        self.data_endpoint = data_endpoint
        self.control_endpoint = control_endpoint
        self.rate_fps = rate_fps
        self.faults = faults
        self.rng = np.random.default_rng(seed)
        self.max_message_bytes = max_message_bytes
        self.send_timeout_s = send_timeout_s
        self.wait_for_arm = wait_for_arm
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        # own context: terminating it on exit waits until queued messages are sent, before Python
        # frees the zero-copy buffers they point into
        self.context = zmq.Context()
        self.msg_seq = 0
        self.state = "idle"
        self.report = FaultReport()
        self._armed = threading.Event()
        self._abort = threading.Event()
        self._stop = threading.Event()
        self._status_lock = threading.Lock()
        self._progress = {"series_id": None, "frames_sent": 0, "frames_dropped_at_source": 0, "series_done": 0}
        self._socket = None
        self._monitor = None
        self._peers = 0
        self._control_thread = None

    # -- sockets
    def __enter__(self) -> "FakeDetector":
        self._bind()
        if self.control_endpoint:
            self._control_socket = self.context.socket(zmq.REP)
            self._control_socket.setsockopt(zmq.LINGER, 0)
            self._control_socket.setsockopt(zmq.MAXMSGSIZE, 65536)
            try:
                self._control_socket.bind(self.control_endpoint)
            except zmq.ZMQError:
                self._control_socket.close(0)
                self._close_data(0)
                self.context.term()
                raise
            self._control_thread = threading.Thread(target=self._serve_control, daemon=True, name="detector-control")
            self._control_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._close_data(linger_s=10.0)
        if self._control_thread:
            self._control_thread.join(timeout=2)
        self.context.term()

    def _bind(self) -> None:
        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.SNDHWM, 8)
        socket.setsockopt(zmq.SNDTIMEO, int(self.send_timeout_s * 1000))
        self._monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        try:
            socket.bind(self.data_endpoint)
        except zmq.ZMQError:
            socket.disable_monitor()
            self._monitor.close(0)
            socket.close(0)
            raise
        self._socket = socket
        self._peers = 0

    def _close_data(self, linger_s: float) -> None:
        if self._socket is not None:
            self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._socket.close()
            self._socket = None

    def _poll_peers(self, timeout_ms: int = 0) -> int:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(timeout_ms):
            event = recv_monitor_message(self._monitor)["event"]
            self._peers += 1 if event == zmq.EVENT_ACCEPTED else -1 if event == zmq.EVENT_DISCONNECTED else 0
            timeout_ms = 0
        return self._peers

    def wait_for_peer(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._poll_peers(50) < 1:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
        return True

    def _send(self, parts: list, timeout_s: float | None = None) -> bool:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.send_timeout_s)
        while True:
            try:
                self._socket.send_multipart(parts, copy=False)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False

    def _next_seq(self) -> int:
        seq = self.msg_seq
        self.msg_seq += 1
        return seq

    # -- control
    def _serve_control(self) -> None:
        socket = self._control_socket  # bound in __enter__, so a bind error reaches the caller; used only here
        try:
            while not self._stop.is_set():
                if not socket.poll(100):
                    continue
                try:
                    request = json.loads(socket.recv())
                    command = request.get("command") if isinstance(request, dict) else None
                except (ValueError, RecursionError):
                    command = None
                if command == "status":
                    reply = {"ok": True, "state": self.state, **self.status()}
                elif command == "arm":
                    self._armed.set()
                    reply = {"ok": True, "state": "armed"}
                elif command == "abort":
                    self._abort.set()
                    reply = {"ok": True, "state": "aborting" if self.state == "acquiring" else self.state}
                else:
                    reply = {"ok": False, "error": "expected JSON {\"command\": \"status\"|\"arm\"|\"abort\"}"}
                socket.send(encode_header(reply))
        finally:
            socket.close(0)

    def status(self) -> dict:
        with self._status_lock:
            return dict(self._progress)

    # -- streaming
    def run(self, sources, loop: bool = False) -> FaultReport:
        """Stream every series (again and again with `loop`); returns what the faults did."""
        sources = list(sources) if loop else sources
        repeat = 0
        while True:
            for make_source in sources:
                if self._stop.is_set():
                    return self.report
                if self.wait_for_arm:
                    self.state = "waiting for arm"
                    while not self._armed.wait(self.heartbeat_s):
                        self._send(encode_heartbeat(None, self._next_seq(), time.time_ns(), self.state), 0.1)
                        if self._stop.is_set():
                            return self.report
                    self._armed.clear()
                if not self.wait_for_peer(self.peer_timeout_s):
                    raise TimeoutError(f"no receiver connected to {self.data_endpoint} within {self.peer_timeout_s} s")
                source = make_source() if callable(make_source) else make_source
                self._stream(source, f"-r{repeat}" if repeat else "")
            repeat += 1
            if not loop:
                self.state = "idle"
                return self.report

    def _encode(self, recorded: bytes | None, build, verbatim: bool) -> list:
        """The recorded header verbatim when replaying unchanged, else a fresh one with our msg_seq."""
        if recorded is not None and verbatim:
            seq = json.loads(recorded)["msg_seq"]
            self.msg_seq = seq + 1
            return [recorded, *build(seq)[1:]]
        return build(self._next_seq())

    def _stream(self, source: SeriesSource, loop_suffix: str = "") -> None:
        sid = source.series_id + loop_suffix
        verbatim = not loop_suffix and not self.faults.touches_headers
        self.state = "acquiring"
        self._abort.clear()
        faults, report = self.faults, self.report
        with self._status_lock:
            self._progress.update(series_id=sid, frames_sent=0, frames_dropped_at_source=0)
        sent = dropped = 0
        start_time = time.monotonic()
        expected = source.start_fields["scan"]["frames_expected"]
        oversize_left = faults.counts.get("oversize", 0)
        disconnect_left = faults.counts.get("disconnect", 0)
        held: list | None = None  # a frames message held back to reorder
        late_overview = None
        status, end_recorded = "complete", None
        for index, (htype, recorded, payload) in enumerate(source.messages):
            if htype == "series_start":
                fields = dict(payload) | ({"unique_id": uuid.uuid4().hex} if loop_suffix else {})
                parts = self._encode(recorded, lambda seq: encode_series_start(sid, seq, fields, source.pixel_mask),
                                     verbatim)
                if not self._send(parts, 10.0):
                    raise TimeoutError("no receiver took series_start")
            elif htype == "overview_image":
                if "no_overview" in faults.flags:
                    report.events.append("overview withheld")
                    continue
                o = payload

                def build(seq, o=o):
                    return encode_overview(sid, seq, o["overview_id"], o["image"], o["pixel_size_A"], o["affine"],
                                           o["acquired"])

                if faults.late_overview_s is not None:
                    late_overview = build
                    continue
                self._send(self._encode(recorded, build, verbatim), 10.0)
            elif htype == "series_end":
                if isinstance(payload, dict):
                    status, end_recorded = payload["status"], recorded
                break
            elif htype == "frames":
                if self._abort.is_set() or self._stop.is_set():
                    status = "aborted"
                    break
                ids, scan_yx, stamps, pixels = payload
                self._pace(source, index, sent + dropped, start_time)
                parts = self._encode(recorded, lambda seq: encode_frames(sid, seq, ids, scan_yx, stamps, pixels),
                                     verbatim)
                id_list = ids.astype(np.int64).tolist()
                fault = self._draw_fault()
                if oversize_left and sent + dropped >= expected // 3:
                    oversize_left, fault = oversize_left - 1, "oversize"
                if disconnect_left and sent + dropped >= expected // 2:
                    disconnect_left -= 1
                    report.events.append(f"disconnect before frame {id_list[0]}")
                    self._close_data(linger_s=5.0)
                    time.sleep(0.3)
                    self._bind()
                    self.wait_for_peer(self.peer_timeout_s)
                outgoing = self._apply_fault(fault, parts, pixels, id_list)
                if fault == "reorder" and held is None:
                    held = outgoing
                    continue
                if held is not None:
                    outgoing, held = outgoing + held, None
                sent_now, dropped_now = self._deliver(outgoing)
                sent, dropped = sent + sent_now, dropped + dropped_now
                with self._status_lock:
                    self._progress.update(frames_sent=sent, frames_dropped_at_source=dropped)
        if held is not None:
            sent_now, dropped_now = self._deliver(held)
            sent, dropped = sent + sent_now, dropped + dropped_now
        if "no_end" in faults.flags:
            report.events.append("series_end withheld")
        else:
            self._send(self._encode(end_recorded, lambda seq: encode_series_end(sid, seq, status, sent, dropped),
                                    verbatim), 10.0)
        if late_overview is not None:
            time.sleep(faults.late_overview_s)
            self._send(late_overview(self._next_seq()), 10.0)
            report.events.append(f"overview sent {faults.late_overview_s:g} s after the series ended")
        with self._status_lock:
            self._progress.update(frames_sent=sent, frames_dropped_at_source=dropped)
            self._progress["series_done"] += 1
        self.state = "idle"

    def _deliver(self, outgoing: list) -> tuple[int, int]:
        """Send (parts, ids, kind) messages; returns frames sent and frames dropped at source."""
        sent = dropped = 0
        for parts, ids, kind in outgoing:
            if kind == "source_drop":
                self._record(kind, ids)
                dropped += len(ids)
            elif kind == "drop":  # lost in transit: the detector believes it sent them
                self._record(kind, ids)
                sent += len(ids)
            elif self._send(parts):
                self._record(kind, ids)
                sent += len(ids) if kind != "duplicate" else 0
            elif kind == "duplicate":  # the original copy went through: nothing is lost
                self.report.events.append(f"duplicate of frames {ids[0]}.. not sent (send timeout)")
            else:  # nobody took it within the send timeout: a real detector drops and says so
                self.report.frames_dropped_at_source.extend(ids)
                dropped += len(ids)
        return sent, dropped

    def _pace(self, source: SeriesSource, index: int, frames_done: int, start_time: float) -> None:
        if self.rate_fps == "max":
            return
        times = source.recorded_times_ns
        if self.rate_fps == "recorded" and times is not None and index < len(times):
            target = start_time + (int(times[index]) - int(times[0])) / 1e9
        elif self.rate_fps == "recorded":
            target = start_time + frames_done * source.frame_interval_s
        else:
            target = start_time + frames_done / float(self.rate_fps)
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _draw_fault(self) -> str | None:
        for name in PER_MESSAGE_FAULTS:
            p = self.faults.probabilities.get(name, 0.0)
            if p and self.rng.random() < p:
                return name
        return None

    def _apply_fault(self, fault: str | None, parts: list, pixels: np.ndarray, ids: list[int]) -> list:
        """Messages to send instead of `parts`: (parts, frame ids, kind)."""
        if fault is None or fault == "reorder":
            return [(parts, ids, "ok")]
        if fault == "drop":
            return [(None, ids, "drop")]
        if fault == "source_drop":
            return [(None, ids, "source_drop")]
        if fault == "duplicate":
            return [(parts, ids, "ok"), (parts, ids, "duplicate")]
        header = json.loads(bytes(parts[0]))
        if fault == "truncate":
            pixel_bytes = bytes(parts[4])
            return [([parts[0], *parts[1:4], pixel_bytes[: len(pixel_bytes) // 2]], ids, "bad")]
        if fault == "garbage":
            return [([self.rng.bytes(int(self.rng.integers(1, 4096)))], ids, "garbage")]
        if fault == "wrong_shape":
            h, w = header["shape"]
            header["shape"] = [h // 2, w * 2]
            return [([encode_header(header), *parts[1:]], ids, "bad")]
        if fault == "wrong_dtype":
            wide = pixels.astype("<u4") if pixels.dtype.itemsize < 4 else pixels.astype("<u2")
            header["dtype"] = wide.dtype.str
            return [([encode_header(header), *parts[1:4], memoryview(np.ascontiguousarray(wide)).cast("B")], ids, "bad")]
        if fault == "oversize":
            padding = bytes(int(1.5 * self.max_message_bytes))
            return [([parts[0], *parts[1:4], padding], ids, "bad")]
        raise AssertionError(fault)

    def _record(self, kind: str, ids: list[int]) -> None:
        report = self.report
        {"ok": report.frames_sent_ok, "drop": report.frames_lost_in_transit,
         "source_drop": report.frames_dropped_at_source, "bad": report.frames_in_bad_messages,
         "garbage": report.frames_in_garbage, "duplicate": report.frames_duplicated}[kind].extend(ids)
