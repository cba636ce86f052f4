"""simed-stream/1 decoding, fuzzed: any input either decodes to a message that holds what its
header declares, or is rejected with `ProtocolError` — never another exception, never a hang,
never an allocation beyond what arrived. (docs/testing.md: what is fuzzed and how to run more.)"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from detector_streams import scan_source, unique_frames
from fuzzing import JSON_VALUES, examples, mutated_bytes, mutated_json, no_hang
from simed_stream.protocol import (MAX_FRAME_ID, PROTOCOL, Frames, Heartbeat, OverviewImage, ProtocolError,
                                   SeriesEnd, SeriesStart, decode, encode_frames, encode_header, encode_heartbeat,
                                   encode_overview, encode_series_end, encode_series_start, scan_order)

SHAPE = (6, 5)


def valid_messages() -> dict[str, list[bytes]]:
    """One message of each kind, from the protocol's own encoders and the detector tests' scan."""
    fields = scan_source("fuzz", (2, 3), 2, frames=unique_frames(12, shape=SHAPE)).start_fields
    frames = unique_frames(4, shape=SHAPE)
    ids = np.arange(2, 6, dtype=np.uint64)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 1] = 1
    built = {
        "series_start": encode_series_start("fuzz", 0, fields),
        "series_start_mask": encode_series_start("fuzz", 0, fields, mask),
        "frames": encode_frames("fuzz", 1, ids, scan_order((2, 3), "raster")[ids.astype(int) // 2],
                                ids * 1000, frames),
        "overview": encode_overview("fuzz", 2, 0, np.ones((4, 3), np.float32), 2.5, np.eye(2, 3), "after"),
        "series_end": encode_series_end("fuzz", 3, "complete", 12, 0, frames_skipped=1, notes=["a note"]),
        "heartbeat": encode_heartbeat(None, 4, 123, "idle"),
    }
    return {name: [bytes(part) for part in parts] for name, parts in built.items()}


VALID = valid_messages()
KINDS = sorted(VALID)


def check_decode(parts: list) -> None:
    """The property: a typed message consistent with its header, or ProtocolError."""
    with no_hang():
        try:
            message = decode(parts, max_message_bytes=1 << 20)
        except ProtocolError as error:
            assert isinstance(error.reason, str) and error.reason and "\n" not in error.reason
            ids = error.frame_ids
            assert ids is None or (ids.dtype == np.uint64 and ids.ndim == 1 and (ids < MAX_FRAME_ID).all())
            return
    assert isinstance(message, (SeriesStart, Frames, OverviewImage, SeriesEnd, Heartbeat))
    assert isinstance(message.msg_seq, int) and message.msg_seq >= 0
    if isinstance(message, SeriesStart):
        assert len(message.sig_shape) == 2 and message.frames_expected >= 1 and message.dtype is not None
        assert message.pixel_mask is None or message.pixel_mask.shape == message.sig_shape
    elif isinstance(message, Frames):
        n = len(message.frame_ids)
        assert n >= 1 and message.frame_ids[0] == message.header["first_frame_id"]
        assert message.scan_yx.shape == (n, 2) and message.timestamps_ns.shape == (n,)
        assert message.pixels.shape == (n, *message.header["shape"])
    elif isinstance(message, OverviewImage):
        assert message.affine.shape == (2, 3) and message.image.ndim == 2
    elif isinstance(message, SeriesEnd):
        assert message.frames_sent >= 0 and message.frames_skipped >= 0 and message.frames_beyond_scan >= 0
        assert all(isinstance(note, str) for note in message.notes)


def test_valid_messages_decode():
    """The corpus the mutations start from is valid: a mutation that is rejected is the mutation's doing."""
    for parts in VALID.values():
        check_decode(parts)
        decode(parts)


@examples(300)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_parts(parts):
    check_decode(parts)


@examples(300)
@given(st.sampled_from(KINDS), JSON_VALUES, st.data())
def test_generated_headers(kind, extra, data):
    """A header with the right protocol and kind but every other field generated, with the data
    parts of a valid message of that kind (or some of them)."""
    header = {"protocol": PROTOCOL, "htype": json.loads(VALID[kind][0])["htype"]}
    header |= data.draw(st.dictionaries(st.sampled_from(sorted(json.loads(VALID[kind][0]))), JSON_VALUES, max_size=12))
    parts = VALID[kind][1:]
    check_decode([encode_header(header)] + data.draw(st.lists(st.sampled_from(parts), max_size=5)) if parts
                 else [encode_header(header)])


@examples(400)
@given(st.sampled_from(KINDS), st.data())
def test_mutated_header_fields(kind, data):
    """A valid message whose header fields are replaced by wrong types, absurd sizes, negatives."""
    parts = VALID[kind]
    header = data.draw(mutated_json(json.loads(parts[0])))
    check_decode([encode_header(header)] + parts[1:])


@examples(400)
@given(st.sampled_from(KINDS), st.data())
def test_mutated_bytes(kind, data):
    """A valid message with bit flips, cuts, insertions in any part, parts dropped or repeated."""
    parts = list(VALID[kind])
    which = data.draw(st.integers(0, len(parts) - 1))
    parts[which] = data.draw(mutated_bytes(parts[which]))
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(parts)))
        if data.draw(st.booleans()) and at < len(parts):
            del parts[at]
        else:
            parts.insert(at, data.draw(st.sampled_from(parts or [b""])))
    check_decode(parts)


@examples(200)
@given(st.sampled_from(["shape", "count", "first_frame_id"]), st.integers(-2**70, 2**70) | st.sampled_from(
    [2**31, 2**32, 2**62 - 1, 2**62, 2**63, 2**64, 65536, 65537, 1_000_001]), st.integers(0, 1))
def test_absurd_frame_sizes_are_rejected_before_allocating(field, value, side):
    """A frames header declaring gigantic counts or shapes with the small parts of a valid message:
    rejected by size arithmetic, with nothing allocated (the deadline and memory would show it)."""
    header = json.loads(VALID["frames"][0])
    if field == "shape":
        header["shape"][side] = value
    else:
        header[field] = value
    check_decode([encode_header(header)] + VALID["frames"][1:])
