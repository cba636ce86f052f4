"""Every frame of a mutated stream accounted: series with some messages mutated or dropped go over
real ZeroMQ (simed-stream/1, DECTRIS) and real TCP (Merlin, Serval) into a running receiver. Per
series, the capture's frame status must agree with its accounting (received + rejected + missing
= expected, each a count of that status), every frame whose message came intact must be received,
and nothing may reach the receiver's internal-error path."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time

import h5py
import numpy as np
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from detector_streams import free_port, receiver_settings, unique_frames
from fuzz_corpus import DECTRIS_SERIES, TCP_SERIES
from fuzzing import examples, mutated_bytes, mutated_json
from simed_stream.capture import MISSING, RECEIVED, REJECTED
from simed_stream.ingest import Receiver
from simed_stream.protocol import encode_frames, encode_series_end, encode_series_start, scan_order

NAV, PER_POSITION, BATCH = (2, 3), 2, 2
N_FRAMES = NAV[0] * NAV[1] * PER_POSITION
SHAPE = (16, 16)
CLOSE_TIMEOUT_S = 15.0


def check_summary(summary, intact: set[int], attributable: set[int] = frozenset(), seen: list | None = None):
    """The series' capture against its accounting; `seen` collects (intact frames, accounting)."""
    with h5py.File(summary.path, "r") as f:
        status = f["frame_status"][:]
    a = summary.accounting
    assert a["received"] == (status == RECEIVED).sum() and a["rejected"] == (status == REJECTED).sum(), a
    assert a["missing"] == (status == MISSING).sum() - a["dropped_at_source"], a
    assert a["received"] + a["rejected"] + a["missing"] + a["dropped_at_source"] == a["frames_expected"], a
    assert all(status[i] == RECEIVED for i in intact), (sorted(intact), status.tolist())
    assert all(status[i] in (RECEIVED, REJECTED) for i in attributable), (sorted(attributable), status.tolist())
    if seen is not None:
        seen.append((len(intact), a))


def not_vacuous(seen: list, examples_run: int) -> None:
    """Every example closed its series, intact frames were checked, and mutations cost frames."""
    assert len(seen) >= examples_run
    assert sum(n for n, _ in seen) > 0 and any(a["rejected"] + a["missing"] for _, a in seen)


def closed_series(receiver: Receiver, series_id: str, what) -> object:
    """The summary of `series_id` once the receiver has closed it (each example waits for its own
    series: a failing example must not make the next ones fail)."""
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while time.monotonic() < deadline:
        summary = next((s for s in list(receiver.closed) if s.series_id == series_id), None)
        if summary is not None:
            return summary
        time.sleep(0.02)
    raise AssertionError(f"series {series_id} not closed within {CLOSE_TIMEOUT_S} s; sent {what}; "
                         f"receiver: {receiver.status()}")


def no_internal_errors(receiver: Receiver, caplog) -> None:
    assert receiver.telemetry.snapshot()["internal_errors"] == 0, receiver.telemetry.last_internal_error
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


# ---------------------------------------------------------------- simed-stream/1 over ZeroMQ

def simed_series(series_id: str) -> list[list[bytes]]:
    """series_start, 6 frames messages of 2 frames, series_end: the detector tests' scan, 16×16."""
    frames = unique_frames(N_FRAMES, shape=SHAPE)
    fields = {"unique_id": series_id, "detector": {"model": "fuzz", "sig_shape": list(SHAPE), "dtype": "<u2"},
              "scan": {"nav_shape": list(NAV), "pattern": "raster", "frames_per_position": PER_POSITION,
                       "frames_expected": N_FRAMES},
              "optics": {}, "microscope": {}, "trigger_mode": "internal", "encoding": "raw", "user_data": {}}
    order = scan_order(NAV, "raster")
    messages = [encode_series_start(series_id, 0, fields)]
    for seq, first in enumerate(range(0, N_FRAMES, BATCH), start=1):
        ids = np.arange(first, first + BATCH, dtype=np.uint64)
        messages.append(encode_frames(series_id, seq, ids, order[ids.astype(int) // PER_POSITION],
                                      ids * 1000, frames[first:first + BATCH]))
    messages.append(encode_series_end(series_id, len(messages), "complete", N_FRAMES, 0))
    return [[bytes(part) for part in parts] for parts in messages]


def test_mutated_simed_streams_every_frame_accounted(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    numbers = itertools.count()
    settings = receiver_settings(tmp_path, "simed", endpoint, {}, series_timeout_s=3.0)

    with Receiver(settings) as receiver:
        @examples(12)
        @given(st.data())
        def one_series(data):
            series_id = f"fuzz-{next(numbers):06d}"  # one width: the draws must not depend on it
            messages = simed_series(series_id)
            intact, attributable, sent = set(), set(), []
            for index, parts in enumerate(messages):
                ids = set(range((index - 1) * BATCH, index * BATCH)) if 0 < index < len(messages) - 1 else set()
                fate = data.draw(st.sampled_from(["intact"] * 3 + ["data", "header", "bytes", "drop"])) \
                    if ids else "intact"
                if fate == "drop":
                    continue
                if fate == "data":  # scan positions, stamps or pixels: the header and ids still say whose
                    part = data.draw(st.integers(2, 4))
                    parts = parts[:part] + [data.draw(mutated_bytes(parts[part]))] + parts[part + 1:]
                    attributable |= ids
                elif fate == "header":
                    parts = [json.dumps(data.draw(mutated_json(json.loads(parts[0])))).encode()] + parts[1:]
                elif fate == "bytes":
                    part = data.draw(st.integers(0, len(parts) - 1))
                    parts = parts[:part] + [data.draw(mutated_bytes(parts[part]))] + parts[part + 1:]
                else:
                    intact |= ids
                sent.append(parts)
            for parts in sent:
                push.send_multipart(parts)
            summary = closed_series(receiver, series_id, [parts[0][:200] for parts in sent])
            check_summary(summary, intact, attributable, seen)
            no_internal_errors(receiver, caplog)

        seen = []
        try:
            one_series()
            not_vacuous(seen, 3)
        finally:
            push.close(linger=0)
            context.term()


# ---------------------------------------------------------------- DECTRIS stream v1 and v2 over ZeroMQ

def test_mutated_dectris_streams_every_frame_accounted(tmp_path, caplog):
    """The DECTRIS simulator's series (start, 6 images, end), some image messages mutated or
    dropped; each becomes one series whose intact images are all received."""
    caplog.set_level(logging.ERROR)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    closed = itertools.count(1)
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": NAV}, series_timeout_s=3.0)
    keys = [key for key in sorted(DECTRIS_SERIES) if key[1] != "mask"]

    with Receiver(settings) as receiver:
        @examples(12)
        @given(st.sampled_from(keys), st.data())
        def one_series(key, data):
            messages = DECTRIS_SERIES[key]
            intact = set()
            for index, parts in enumerate(messages):
                image = index - 1 if 0 < index < len(messages) - 1 else None
                fate = data.draw(st.sampled_from(["intact"] * 3 + ["bytes", "drop"])) if image is not None \
                    else "intact"
                if fate == "drop":
                    continue
                if fate == "bytes":
                    part = data.draw(st.integers(0, len(parts) - 1))
                    parts = parts[:part] + [data.draw(mutated_bytes(parts[part]))] + parts[part + 1:]
                elif image is not None:
                    intact.add(image)
                push.send_multipart(parts)
            summaries = receiver.wait_for_series(next(closed), CLOSE_TIMEOUT_S)
            summary = summaries[-1]
            # stream v1: a mutation can make the next image's parts read as part of this one
            check_summary(summary, intact if key[0] == 2 else set(), seen=seen)
            no_internal_errors(receiver, caplog)

        seen = []
        try:
            one_series()
            not_vacuous(seen, 3)
        finally:
            push.close(linger=0)
            context.term()


# ---------------------------------------------------------------- Merlin and Serval over TCP

@pytest.mark.parametrize("kind", ["merlin", "serval-new"])
def test_mutated_tcp_streams_every_frame_accounted(tmp_path, caplog, kind):
    """One connection a series (the receiver reconnects): the recorded series with some frames
    mutated or dropped; closing the connection ends it, complete or not."""
    caplog.set_level(logging.ERROR)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(CLOSE_TIMEOUT_S)
    source = "merlin" if kind == "merlin" else "serval"
    settings = receiver_settings(tmp_path, source, f"tcp://127.0.0.1:{server.getsockname()[1]}", {"shape": NAV},
                                 series_timeout_s=3.0)
    closed = itertools.count(1)
    first = 1 if kind == "merlin" else 0  # Merlin's first message is the acquisition header

    with Receiver(settings) as receiver:
        @examples(6)
        @given(st.data())
        def one_series(data):
            intact, chunks = set(), []
            for index, message in enumerate(TCP_SERIES[kind]):
                frame = index - first if index >= first else None
                fate = data.draw(st.sampled_from(["intact"] * 3 + ["bytes", "drop"])) if frame is not None \
                    else "intact"
                if fate == "drop":
                    continue
                if fate == "bytes":
                    message = data.draw(mutated_bytes(message))
                elif frame is not None:
                    intact.add(frame)
                chunks.append((frame, fate, message))
            # a frame right after a mutated one may be swallowed by a length made longer
            intact -= {frame + 1 for frame, fate, _ in chunks if fate == "bytes" and frame is not None}
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"".join(message for _, _, message in chunks))
            summaries = receiver.wait_for_series(next(closed), CLOSE_TIMEOUT_S)
            check_summary(summaries[-1], intact, seen=seen)
            no_internal_errors(receiver, caplog)

        seen = []
        try:
            one_series()
            not_vacuous(seen, 3)
        finally:
            server.close()
