"""Merlin (MPX) and Serval (jsonimage) decoding, fuzzed, with the TCP stream's framing: a recorded
series, mutated or wholly generated, goes through a real socket pair in pieces cut anywhere, into
the adapter's own `TcpStream` and poll loop. Every event must be a valid message or a rejection;
nothing may raise, hang, or lose frames that came intact."""

from __future__ import annotations

import json
import socket

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzz_corpus import SCAN, SHAPE
from fuzz_corpus import TCP_SERIES as SERIES
from fuzzing import ABSURD_INTS, JSON_VALUES, check_events, examples, mutated_bytes, mutated_json, no_hang
from simed_stream.detectors.merlin.adapter import MerlinAdapter, parse_acquisition_header, parse_frame_header
from simed_stream.detectors.merlin.sim import frame_header, mpx
from simed_stream.detectors.serval.adapter import ServalAdapter, frame_layout
from simed_stream.detectors.settings import SourceSettings
from simed_stream.detectors.tcp_stream import parse_endpoint
from simed_stream.protocol import Frames

MAX_MESSAGE_BYTES = 1 << 16


def make_adapter(kind: str):
    if kind == "merlin":
        return MerlinAdapter(SourceSettings(source="merlin", scan={"shape": SCAN}), MAX_MESSAGE_BYTES)
    order = "little" if kind == "serval-old" else "big"
    return ServalAdapter(SourceSettings(source="serval", scan={"shape": SCAN}, serval={"byte_order": order}),
                         MAX_MESSAGE_BYTES)


def run_stream(kind: str, data: bytes, cuts: list[int]) -> list:
    """`data` written into a socket pair in pieces (cut at `cuts`), the adapter polling between
    pieces, then a quiet wire, then the peer closing: the adapter's whole poll loop."""
    adapter = make_adapter(kind)
    ours, theirs = socket.socketpair()
    adapter.stream.connection = ours
    events = []
    try:
        with no_hang(20):
            bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
            for start, end in zip(bounds, bounds[1:]):
                theirs.sendall(data[start:end])
                events += adapter.poll(0)
            events += adapter.poll(0)  # quiet
            theirs.close()
            events += adapter.poll(1000)  # closed
            events += adapter.flush()
    finally:
        theirs.close()
        adapter.close()
    return events


def frames_handed_on(events) -> list[int]:
    return [int(i) for e in events if isinstance(e.message, Frames) for i in e.message.frame_ids]


KINDS = sorted(SERIES)


def test_recorded_series_decode_whole():
    """The corpus is valid: cut anywhere, every frame of it arrives, once."""
    for kind in KINDS:
        data = b"".join(SERIES[kind])
        events = run_stream(kind, data, list(range(0, len(data), 97)))
        check_events(events)
        assert sorted(frames_handed_on(events)) == list(range(6)), kind
        assert not [e for e in events if e.error is not None], kind


@examples(150)
@given(st.sampled_from(KINDS), st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=6))
def test_random_bytes(kind, data, cuts):
    check_events(run_stream(kind, data, cuts))


@examples(300)
@given(st.sampled_from(KINDS), st.data())
def test_mutated_series(kind, data):
    """Some messages of a recorded series mutated (bytes, cuts, insertions, absurd digits), dropped
    or repeated, the stream cut into pieces anywhere: events stay valid, and every frame whose
    message came intact, and is not the next one after a mutation (it may be swallowed by a
    length made longer), is handed on."""
    messages = list(SERIES[kind])
    touched = set()
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(messages) - 1))
        messages[index] = data.draw(mutated_bytes(messages[index]))
        touched.add(index)
    stream = b"".join(messages)
    events = run_stream(kind, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    check_events(events)
    first_frame = 1 if kind == "merlin" else 0  # Merlin's message 0 is the acquisition header
    if kind == "merlin" and 0 in touched:
        return  # without its header a series may start elsewhere: counted, but ids may differ
    intact = {i - first_frame for i in range(first_frame, len(messages))
              if i not in touched and i - 1 not in touched}
    assert intact <= set(frames_handed_on(events)), (sorted(touched), sorted(frames_handed_on(events)))


@examples(200)
@given(st.sampled_from(["serval-new", "serval-old"]), st.integers(1, 5), st.data())
def test_serval_headers_mutated(kind, which, data):
    """A jsonimage header with fields replaced by wrong types, absurd sizes, negative numbers."""
    messages = list(SERIES[kind])
    header_line, pixels = messages[which].split(b"\n", 1)
    header = data.draw(mutated_json(json.loads(header_line)))
    messages[which] = json.dumps(header).encode() + b"\n" + pixels
    events = run_stream(kind, b"".join(messages), [])
    check_events(events)


@examples(200)
@given(st.data())
def test_merlin_frame_headers_generated(data):
    """MQ1 headers with every field generated (absurd sizes, negatives, text), before a frame's pixels."""
    fields = data.draw(st.lists(st.one_of(ABSURD_INTS.map(str), st.integers(-99, 99999).map(str),
                                          st.sampled_from(["U08", "U16", "U32", "R64", "MQ1A", "", " "]),
                                          st.text(max_size=6)), min_size=0, max_size=16))
    header = ("MQ1," + ",".join(fields)).encode("utf-8", "replace")
    payload = header + data.draw(st.binary(max_size=200))
    with no_hang():
        try:
            parsed = parse_frame_header(memoryview(payload))
        except (ValueError, IndexError):
            parsed = None
    if parsed is not None:
        assert 0 < parsed["header_bytes"] <= len(payload)
    messages = list(SERIES["merlin"][:2]) + [mpx(payload)] + list(SERIES["merlin"][2:])
    check_events(run_stream("merlin", b"".join(messages), []))


@examples(100)
@given(st.text(max_size=300))
def test_merlin_acquisition_headers_generated(text):
    fields = parse_acquisition_header(("HDR,\t\n" + text).encode("utf-8", "replace"))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    messages = [mpx(("HDR,\t\n" + text).encode("utf-8", "replace"))] + list(SERIES["merlin"][1:])
    check_events(run_stream("merlin", b"".join(messages), []))


@examples(200)
@given(st.dictionaries(st.sampled_from(["width", "height", "pixelFormat", "bitDepth", "dataSize", "frameNumber",
                                        "measurementID", "timeAtFrame"]), JSON_VALUES | ABSURD_INTS, max_size=8))
def test_serval_frame_layout_generated(header):
    with no_hang():
        try:
            height, width, kind, nbytes = frame_layout(header)
        except ValueError:
            return
    assert 0 < height <= 65536 and 0 < width <= 65536 and nbytes == height * width * int(kind[1])


def test_merlin_frame_header_built_by_the_simulator_parses():
    header = frame_header(3, SHAPE, "U16", 12)
    parsed = parse_frame_header(memoryview(header + np.zeros(SHAPE, ">u2").tobytes()))
    assert parsed["sequence"] == 3 and (parsed["height"], parsed["width"]) == SHAPE


@examples(100)
@given(st.text(alphabet="0123456789²³¹ -x\t", max_size=12))
def test_merlin_frame_counts_of_any_digits(count):
    """`Frames in Acquisition` read as Latin-1: '²' is a digit to str.isdigit, not to int()."""
    header = f"HDR,\t\nFrames in Acquisition (Number):\t{count}\nEnd\t".encode("latin-1")
    messages = [mpx(header)] + list(SERIES["merlin"][1:])
    events = run_stream("merlin", b"".join(messages), [])
    check_events(events)
    assert sorted(frames_handed_on(events)) == list(range(6))


@examples(100)
@given(st.text(max_size=30) | st.builds(
    "{}{}:{}".format, st.sampled_from(["tcp://", "tcp://listen@", "tcp://connect@", ""]),
    st.sampled_from(["127.0.0.1", "[::1]", "", "host"]), st.text(alphabet="0123456789²³¹٣-", max_size=8)))
def test_endpoints_parse_or_are_refused(endpoint):
    """A detector endpoint from the settings: (host, port, listen) or OSError, nothing else."""
    try:
        host, port, listen = parse_endpoint(endpoint)
    except OSError:
        return
    assert host and 0 <= port < 65536 and isinstance(listen, bool)
