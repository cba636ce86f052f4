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
from fuzz_corpus import DECTRIS_SERIES, TCP_SERIES, merlin_series, recorded_series
from fuzzing import examples, mutated_bytes, mutated_json
from simed_stream.capture import MISSING, RECEIVED, REJECTED
from simed_stream.ingest import Receiver
from simed_stream.protocol import encode_frames, encode_series_end, encode_series_start, scan_order

NAV, PER_POSITION, BATCH = (2, 3), 2, 2
N_FRAMES = NAV[0] * NAV[1] * PER_POSITION
SHAPE = (16, 16)
CLOSE_TIMEOUT_S = 15.0
ABSENT_AFTER_S = 2.0  # a series with nothing intact, closed within this or taken to have had nothing to capture


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


def run_examples(one_series, seen: list, close) -> None:
    """Run the property, require that it checked something, and close the sender whatever happened."""
    try:
        one_series()
        not_vacuous(seen, 3)
    finally:
        close()


def closed_series(receiver: Receiver, series_id: str, what, may_be_absent: bool = False) -> object:
    """The summary of `series_id` once the receiver has closed it. Each example waits for its own
    series, found by its id, never by counting closed series: an example can close none (a series
    none of whose frames could be read has nothing to capture), and one abandoned by hypothesis
    halfway would be closed by the next one's start, so a count would check another example's
    series from then on (the long profile's DECTRIS and Merlin failures, docs/testing.md).

    `may_be_absent`: no frame of the series came intact, so it may have had nothing to capture;
    then None once ABSENT_AFTER_S pass without it."""
    deadline = time.monotonic() + (ABSENT_AFTER_S if may_be_absent else CLOSE_TIMEOUT_S)
    while time.monotonic() < deadline:
        summary = next((s for s in list(receiver.closed) if s.series_id == series_id), None)
        if summary is not None:
            return summary
        time.sleep(0.02)
    if may_be_absent:
        return None
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
        run_examples(one_series, seen, lambda: (push.close(linger=0), context.term()))


# ---------------------------------------------------------------- DECTRIS stream v1 and v2 over ZeroMQ

def dectris_example(receiver: Receiver, push, key: tuple, number: int, fates: list, seen: list | None = None):
    """Send series `number` of the DECTRIS corpus `key` (start, 6 images, end), image i as fates[i]
    says ("intact", "drop", or the parts to send instead), and check the summary of that series."""
    messages = recorded_series(*key, mask=key[0] == 2, number=number)
    images, intact = messages[1:-1], {i for i, fate in enumerate(fates) if fate == "intact"}
    sent = [messages[0]] + [parts if fate == "intact" else fate for parts, fate in zip(images, fates)
                            if fate != "drop"] + [messages[-1]]
    for parts in sent:  # only now, every draw done: an example hypothesis abandons sends nothing
        push.send_multipart(parts)
    summary = closed_series(receiver, f"dectris-{number}", [parts[0][:80] for parts in sent],
                            may_be_absent=not intact)
    if summary is not None:
        # stream v1: a mutation can make the next image's parts read as part of this one
        check_summary(summary, intact if key[0] == 2 else set(), seen=seen)
    return summary


def test_mutated_dectris_streams_every_frame_accounted(tmp_path, caplog):
    """The DECTRIS simulator's series (start, 6 images, end), some image messages mutated or
    dropped; each becomes one series whose intact images are all received."""
    caplog.set_level(logging.ERROR)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    numbers = itertools.count(1)  # each example's series its own number, so its own id
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": NAV}, series_timeout_s=3.0)
    keys = [key for key in sorted(DECTRIS_SERIES) if key[1] != "mask"]

    with Receiver(settings) as receiver:
        @examples(12)
        @given(st.sampled_from(keys), st.data())
        def one_series(key, data):
            fates = []  # mutations of series 1's images: the draws must not depend on the number's width
            for parts in DECTRIS_SERIES[key][1:-1]:
                fate = data.draw(st.sampled_from(["intact"] * 3 + ["bytes", "drop"]))
                if fate == "bytes":
                    part = data.draw(st.integers(0, len(parts) - 1))
                    fate = parts[:part] + [data.draw(mutated_bytes(parts[part]))] + parts[part + 1:]
                fates.append(fate)
            dectris_example(receiver, push, key, next(numbers), fates, seen)
            no_internal_errors(receiver, caplog)

        seen = []
        run_examples(one_series, seen, lambda: (push.close(linger=0), context.term()))


# ---------------------------------------------------------------- Merlin and Serval over TCP

def tcp_example(receiver: Receiver, server: socket.socket, kind: str, messages: list[bytes], fates: list,
                series_id: str | None, seen: list | None = None):
    """Send one series on one connection, frame i as fates[i] says ("intact", "drop", or the bytes
    to send instead), and check its summary: that of `series_id`, or (Serval, whose series are
    named by the clock) the first series closed after this example began."""
    first = 1 if kind == "merlin" else 0  # Merlin's first message is the acquisition header
    intact = {i for i, fate in enumerate(fates) if fate == "intact"}
    # a frame right after a mutated one may be swallowed by a length made longer
    intact -= {i + 1 for i, fate in enumerate(fates) if fate not in ("intact", "drop")}
    sent = messages[:first] + [message if fate == "intact" else fate
                               for message, fate in zip(messages[first:], fates) if fate != "drop"]
    # an earlier example's series all closed first (one that split in two closes its second later),
    # so that Serval's "first closed after this began" is this example's
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while receiver.status()["open_series"] and time.monotonic() < deadline:
        time.sleep(0.02)
    before = len(receiver.closed)
    connection, _ = server.accept()
    with connection:
        connection.sendall(b"".join(sent))
    if series_id is None:
        deadline = time.monotonic() + (CLOSE_TIMEOUT_S if intact else ABSENT_AFTER_S)
        while len(receiver.closed) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.closed) > before or not intact, f"no series closed within {CLOSE_TIMEOUT_S} s"
        summary = receiver.closed[before] if len(receiver.closed) > before else None
    else:
        summary = closed_series(receiver, series_id, [m[:40] for m in sent], may_be_absent=not intact)
    if summary is not None:
        check_summary(summary, intact, seen=seen)
    return summary


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
    numbers = itertools.count(1)
    first = 1 if kind == "merlin" else 0

    with Receiver(settings) as receiver:
        @examples(6)
        @given(st.data())
        def one_series(data):
            fates = []
            for message in TCP_SERIES[kind][first:]:
                fate = data.draw(st.sampled_from(["intact"] * 3 + ["bytes", "drop"]))
                fates.append(data.draw(mutated_bytes(message)) if fate == "bytes" else fate)
            if kind == "merlin":  # its own series id: the acquisition header's time stamp
                number = next(numbers)
                tcp_example(receiver, server, kind, merlin_series(number), fates, f"merlin-{number:019d}", seen)
            else:
                tcp_example(receiver, server, kind, TCP_SERIES[kind], fates, None, seen)
            no_internal_errors(receiver, caplog)

        seen = []
        run_examples(one_series, seen, server.close)


# ---------------------------------------------------------------- the long profile's failures, pinned down

@pytest.fixture
def dectris_receiver(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    settings = receiver_settings(tmp_path, "dectris", endpoint, {"shape": NAV}, series_timeout_s=3.0)
    try:
        with Receiver(settings) as receiver:
            yield receiver, push
    finally:
        push.close(linger=0)
        context.term()


def test_dectris_series_after_an_unfinished_one_is_whole(dectris_receiver):
    """The long profile's DECTRIS failure, "a series sent intact came out with only its first
    frames received": hypothesis abandons an example whose draw runs out of data after its start
    and first images went out; the next example's start ends that series (the adapter is right),
    so one example closed two series, and the test, counting closed series, checked from then on
    the one before its own: the abandoned one, frames [1, 1, 0, 0, 0, 0]. The product keeps every
    frame of the whole series; the example now sends only after every draw and finds its series
    by its id."""
    receiver, push = dectris_receiver
    abandoned = recorded_series(2, "bslz4", mask=True, number=1)
    for parts in abandoned[:3]:  # start, images 0 and 1, then nothing: the example was given up
        push.send_multipart(parts)
    summary = dectris_example(receiver, push, (2, "bslz4"), 2, ["intact"] * 6)
    assert summary.accounting["received"] == N_FRAMES // PER_POSITION, summary.accounting
    first = closed_series(receiver, "dectris-1", "start, images 0 and 1")
    with h5py.File(first.path, "r") as f:
        assert f["frame_status"][:].tolist() == [RECEIVED, RECEIVED, MISSING, MISSING, MISSING, MISSING]
    assert [s.series_id for s in receiver.closed] == ["dectris-1", "dectris-2"]


def test_dectris_series_with_nothing_to_capture_closes_none(dectris_receiver):
    """A series whose every image was lost has nothing to capture and closes no series (the
    receiver is told why): counting closed series would wait for the next example's series as
    this one's, and every example after it would check the one before its own."""
    receiver, push = dectris_receiver
    assert dectris_example(receiver, push, (2, "lz4"), 1, ["drop"] * 6) is None
    summary = dectris_example(receiver, push, (2, "lz4"), 2, ["intact"] * 6)
    assert summary.accounting["received"] == 6, summary.accounting
    assert [s.series_id for s in receiver.closed] == ["dectris-2"]


@pytest.fixture
def merlin_receiver(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(CLOSE_TIMEOUT_S)
    settings = receiver_settings(tmp_path, "merlin", f"tcp://127.0.0.1:{server.getsockname()[1]}", {"shape": NAV},
                                 series_timeout_s=3.0)
    try:
        with Receiver(settings) as receiver:
            yield receiver, server
    finally:
        server.close()


def test_merlin_frame_numbered_beyond_the_acquisition_does_not_end_it(merlin_receiver):
    """A frame whose header claims a sequence number beyond `Frames in Acquisition` (here frame
    2 says 999999) ended the acquisition as complete, and its intact frames 3..5 became a second
    series without a header: an intact frame lost to its series, and one example closing two,
    which put the count-based test out of step (one of the Merlin failure's ways)."""
    receiver, server = merlin_receiver
    messages = merlin_series(1)
    garbled = bytearray(messages[3])
    at = garbled.index(b"MQ1,") + 4
    garbled[at:at + 6] = b"999999"
    fates = ["intact", "intact", bytes(garbled), "drop", "intact", "intact"]  # frame 3 dropped: 4, 5 checked
    summary = tcp_example(receiver, server, "merlin", messages, fates, f"merlin-{1:019d}")
    with h5py.File(summary.path, "r") as f:
        assert f["frame_status"][:].tolist() == [RECEIVED, RECEIVED, MISSING, MISSING, RECEIVED, RECEIVED]
    assert summary.accounting["received"] == 4, summary.accounting
    time.sleep(ABSENT_AFTER_S)  # whatever else came of the connection has closed by now
    assert [s.series_id for s in receiver.closed] == [summary.series_id]


def test_merlin_acquisition_with_nothing_readable_then_a_whole_one(merlin_receiver):
    """An acquisition none of whose frames arrives has nothing to capture: no series closes, and
    the next connection's acquisition is whole (the Merlin long run's cascade of time-outs)."""
    receiver, server = merlin_receiver
    assert tcp_example(receiver, server, "merlin", merlin_series(1), ["drop"] * 6, f"merlin-{1:019d}") is None
    summary = tcp_example(receiver, server, "merlin", merlin_series(2), ["intact"] * 6, f"merlin-{2:019d}")
    assert summary.accounting["received"] == 6, summary.accounting
    assert [s.series_id for s in receiver.closed] == [summary.series_id]
