"""DECTRIS decoding, fuzzed: the compressions, stream v2's CBOR and stream v1's parts, alone and as
the adapter reads them message after message. Any input decodes, or is rejected with the
decoder's own error (`CompressionError`, `V2Error`) or — in the adapter — becomes a rejection
event; never another exception, never a hang, never a large allocation for a small input."""

from __future__ import annotations

import json
import struct
import tracemalloc

import cbor2
import zmq
from hypothesis import given
from hypothesis import strategies as st

from detector_streams import unique_frames
from fuzz_corpus import DECTRIS_SERIES as SERIES
from fuzz_corpus import SCAN
from fuzzing import ABSURD_INTS, JSON_VALUES, check_events, examples, mutated_bytes, mutated_json, no_hang
from simed_stream.detectors.base import Decoded
from simed_stream.detectors.dectris.adapter import DectrisAdapter
from simed_stream.detectors.dectris.compression import (CompressionError, compress_bslz4, compress_lz4_block,
                                                        compress_lz4_hdf5, decompress_hdf5, decompress_lz4_block)
from simed_stream.detectors.dectris.stream_v2 import TYPED_ARRAYS, V2Error, decode_message
from simed_stream.detectors.settings import SourceSettings
from simed_stream.protocol import Frames

PIXELS = unique_frames(1, shape=(16, 16), dtype="<u2")[0]
BLOBS = {"bslz4": compress_bslz4(PIXELS), "lz4": compress_lz4_hdf5(PIXELS.tobytes())}
CORPUS = sorted(SERIES)


def adapter() -> DectrisAdapter:
    """The adapter as the receiver makes it; its socket is never opened: messages are handed to it."""
    return DectrisAdapter(SourceSettings(source="dectris", scan={"shape": SCAN}), rcvhwm=8, max_message_bytes=1 << 20)


def feed(target: DectrisAdapter, messages: list[list[bytes]]) -> list[Decoded]:
    """Each message as ZeroMQ frames, through the adapter's own dispatch (v1 or v2), then a flush."""
    events = []
    with no_hang():
        for parts in messages:
            events += target._message([zmq.Frame(part) for part in parts])
        events += target.builder.flush()
        events += target.builder.end("aborted", "fuzz: end of input")
    return events


# ---------------------------------------------------------------- compression

def check_decompression(call, expected_size: int | None) -> None:
    with no_hang():
        try:
            data = call()
        except CompressionError as error:
            assert str(error)
            return
    assert isinstance(data, bytes) and (expected_size is None or len(data) == expected_size)


@examples(300)
@given(st.sampled_from(sorted(BLOBS)), st.data())
def test_hdf5_framed_blobs_mutated(algorithm, data):
    blob = data.draw(mutated_bytes(BLOBS[algorithm]) | st.binary(max_size=64))
    expected = data.draw(st.none() | st.just(PIXELS.nbytes) | st.integers(0, 1 << 16))
    check_decompression(lambda: decompress_hdf5(blob, algorithm, data.draw(st.sampled_from([0, 1, 2, 4, 8, 3])),
                                                1 << 20, expected), expected)


@examples(200)
@given(st.data())
def test_lz4_blocks_mutated(data):
    blob = data.draw(mutated_bytes(compress_lz4_block(PIXELS.tobytes())) | st.binary(max_size=64))
    expected = data.draw(st.just(PIXELS.nbytes) | st.integers(0, 1 << 16))
    check_decompression(lambda: decompress_lz4_block(blob, expected), expected)


@examples(30)
@given(st.binary(max_size=32), st.integers(64 << 20, 256 << 20), st.sampled_from(["bslz4", "lz4", "block"]))
def test_a_small_blob_declaring_a_huge_size_allocates_nothing(body, size, algorithm):
    """LZ4 expands at most 255×: a few bytes that declare hundreds of megabytes are refused before
    a buffer of that size is allocated (the detector's limit alone would allow 256 MiB per frame)."""
    tracemalloc.start()
    try:
        if algorithm == "block":
            check_decompression(lambda: decompress_lz4_block(body, size), size)
        else:
            blob = struct.pack(">QI", size, 8192) + body
            check_decompression(lambda: decompress_hdf5(blob, algorithm, 2, 256 << 20, None), size)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 16 << 20, f"{peak_bytes} bytes allocated for a {len(body)}-byte blob"


# ---------------------------------------------------------------- stream v2 (CBOR)

def check_v2(data: bytes) -> None:
    with no_hang():
        try:
            message = decode_message(data)
        except V2Error as error:
            assert str(error)
            return
    assert message["type"] in ("start", "image", "end")


@examples(300)
@given(st.binary(max_size=128))
def test_v2_random_bytes(data):
    check_v2(data)


def cbor_items(leaves=JSON_VALUES):
    """CBOR items a hostile or broken sender could write: the tags stream v2 uses, holding anything."""
    tags = st.sampled_from([40, 1040, 56500, 55799, *TYPED_ARRAYS, 76, 83, 87, 1, 0])
    return st.recursive(leaves | st.binary(max_size=48), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
        st.builds(cbor2.CBORTag, tags, inner)), max_leaves=10)


@examples(300)
@given(st.sampled_from(["start", "image", "end"]), st.dictionaries(
    st.sampled_from(["series_id", "image_id", "data", "channels", "pixel_mask", "image_size_x", "number_of_images",
                     "start_time", "series_date", "series_unique_id", "arm_date"]), cbor_items(), max_size=6))
def test_v2_generated_messages(kind, fields):
    data = cbor2.dumps(cbor2.CBORTag(55799, {"type": kind, **fields}))
    check_v2(data)
    check_events(feed(adapter(), [[data]]))


@examples(200)
@given(st.lists(ABSURD_INTS | st.integers(-5, 70), min_size=0, max_size=4), st.sampled_from(sorted(TYPED_ARRAYS)),
       st.binary(max_size=64), st.sampled_from([40, 1040]))
def test_v2_arrays_with_absurd_dimensions(dims, typed, payload, layout):
    array = cbor2.CBORTag(layout, [dims, cbor2.CBORTag(typed, payload)])
    data = cbor2.dumps({"type": "image", "image_id": 0, "data": {"threshold_1": array}})
    check_v2(data)
    check_events(feed(adapter(), [[data]]))


@examples(200)
@given(st.sampled_from(["bslz4", "lz4", "zstd", 7, None]), ABSURD_INTS | st.integers(-3, 9),
       st.sampled_from(sorted(BLOBS)), st.data())
def test_v2_compression_tag_mutated(algorithm, elem_size, blob, data):
    body = data.draw(mutated_bytes(BLOBS[blob]))
    array = cbor2.CBORTag(40, [[16, 16], cbor2.CBORTag(69, cbor2.CBORTag(56500, [algorithm, elem_size, body]))])
    message = cbor2.dumps({"type": "image", "image_id": 0, "data": {"threshold_1": array}})
    check_v2(message)
    check_events(feed(adapter(), [[message]]))


# ---------------------------------------------------------------- whole series, v1 and v2, through the adapter

@examples(400)
@given(st.sampled_from(CORPUS), st.data())
def test_mutated_series_through_the_adapter(key, data):
    """A recorded series with some messages' bytes mutated, some dropped or repeated: every event
    is a valid message or a rejection, and the frames that came intact are all handed on."""
    messages = [list(parts) for parts in SERIES[key]]
    touched = set()
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(messages) - 1))
        part = data.draw(st.integers(0, len(messages[index]) - 1))
        kind = data.draw(st.sampled_from(["bytes", "json", "drop", "repeat"]))
        if kind == "json" and messages[index][part][:1] == b"{":
            try:
                header = json.loads(messages[index][part])
            except ValueError:
                header = None
            if isinstance(header, dict) and header:
                messages[index][part] = json.dumps(data.draw(mutated_json(header))).encode()
        elif kind == "drop" and len(messages[index]) > 1:
            del messages[index][part]
        elif kind == "repeat":
            messages[index].insert(part, messages[index][part])
        else:
            messages[index][part] = data.draw(mutated_bytes(messages[index][part]))
        touched.add(index)
    events = feed(adapter(), messages)
    check_events(events)
    frames = [e.message for e in events if isinstance(e.message, Frames)]
    received = sum(len(m.frame_ids) for m in frames)
    assert received <= 6 * (1 + len(touched))  # a repeated image is a duplicate, never more
    if not touched & {0, len(messages) - 1} and key[0] == 2:
        # stream v2: one image a message, so each untouched image message is a frame handed on
        intact = {i - 1 for i in range(1, len(messages) - 1) if i not in touched}
        handed_on = {int(i) for m in frames for i in m.frame_ids}
        assert intact <= handed_on, (sorted(intact), sorted(handed_on))
