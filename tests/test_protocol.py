"""simed-stream/1 encoding and validation, message by message."""

import json

import numpy as np
import pytest

from simed_stream.protocol import (PROTOCOL, Frames, OverviewImage, ProtocolError, SeriesEnd, SeriesStart, decode,
                                   encode_frames, encode_header, encode_heartbeat, encode_overview, encode_series_end,
                                   encode_series_start, scan_order)

START_FIELDS = {
    "unique_id": "u1",
    "detector": {"model": "test", "sig_shape": [8, 6], "dtype": "<u2", "bit_depth": 12, "pixel_pitch_um": 55.0},
    "scan": {"nav_shape": [2, 3], "pattern": "raster", "frames_per_position": 2, "dwell_s": 0.001, "step_A": 10.0,
             "rotation_deg": 0.0, "frames_expected": 12},
    "optics": {"energy_eV": 200e3}, "microscope": {}, "trigger_mode": "internal", "encoding": "raw", "user_data": {},
}


def _bytes(parts):
    return [bytes(p) for p in parts]


def _frames(count=3, shape=(8, 6), dtype="<u2"):
    ids = np.arange(4, 4 + count, dtype=np.uint64)
    scan = np.stack([np.zeros(count), np.arange(count) % 3], axis=1).astype(np.int32)
    stamps = np.arange(count, dtype=np.uint64) * 1000
    pixels = np.arange(count * shape[0] * shape[1]).reshape(count, *shape).astype(dtype)
    return ids, scan, stamps, pixels


def test_every_message_round_trips():
    mask = np.zeros((8, 6), np.uint8)
    mask[1, 2] = 1
    start = decode(_bytes(encode_series_start("s", 0, START_FIELDS, mask)))
    assert isinstance(start, SeriesStart) and start.sig_shape == (8, 6) and start.frames_expected == 12
    np.testing.assert_array_equal(start.pixel_mask, mask)
    ids, scan, stamps, pixels = _frames()
    frames = decode(_bytes(encode_frames("s", 1, ids, scan, stamps, pixels)))
    assert isinstance(frames, Frames) and frames.msg_seq == 1
    for got, want in zip((frames.frame_ids, frames.scan_yx, frames.timestamps_ns, frames.pixels), (ids, scan, stamps, pixels)):
        np.testing.assert_array_equal(got, want)
    assert frames.pixels.dtype == np.dtype("<u2")
    image = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    overview = decode(_bytes(encode_overview("s", 2, 0, image, 4.5, [[2, 0, 1], [0, 2, 1]], "after")))
    assert isinstance(overview, OverviewImage)
    np.testing.assert_array_equal(overview.image, image)
    np.testing.assert_array_equal(overview.affine, [[2, 0, 1], [0, 2, 1]])
    end = decode(_bytes(encode_series_end("s", 3, "complete", 12, 0)))
    assert isinstance(end, SeriesEnd) and end.frames_sent == 12
    assert decode(_bytes(encode_heartbeat(None, 4, 0, "idle"))).msg_seq == 4


def test_headers_are_deterministic_json_with_the_protocol():
    parts = encode_series_end("s", 7, "aborted", 3, 1)
    header = json.loads(parts[0])
    assert header["protocol"] == PROTOCOL and header["htype"] == "series_end" and header["msg_seq"] == 7
    assert parts[0] == encode_series_end("s", 7, "aborted", 3, 1)[0]


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: [b"\xff\xfe not json"] + p[1:], "not a usable JSON header"),
    (lambda p: [encode_header(json.loads(p[0]) | {"protocol": "other/2"})] + p[1:], "protocol"),
    (lambda p: [encode_header(json.loads(p[0]) | {"htype": "image"})] + p[1:], "unknown htype"),
    (lambda p: [encode_header(json.loads(p[0]) | {"msg_seq": -1})] + p[1:], "msg_seq"),
    (lambda p: [encode_header(json.loads(p[0]) | {"series_id": ""})] + p[1:], "series_id"),
    (lambda p: p[:4] + [p[4][:-2]], "pixels part has"),
    (lambda p: p[:4], "expected 5"),
    (lambda p: [encode_header(json.loads(p[0]) | {"dtype": "<f8"})] + p[1:], "dtype"),
    (lambda p: [encode_header(json.loads(p[0]) | {"shape": [8, -6]})] + p[1:], "shape"),
    (lambda p: [encode_header(json.loads(p[0]) | {"first_frame_id": 5})] + p[1:], "first_frame_id"),
])
def test_bad_frames_messages_are_rejected_with_a_reason(mutate, reason):
    parts = _bytes(encode_frames("s", 1, *_frames()))
    with pytest.raises(ProtocolError, match=reason):
        decode(mutate(parts))


def test_rejected_frames_are_attributable_when_the_header_is_readable():
    parts = _bytes(encode_frames("s", 1, *_frames()))
    with pytest.raises(ProtocolError) as error:
        decode(parts[:4] + [parts[4][:5]])
    np.testing.assert_array_equal(error.value.frame_ids, [4, 5, 6])
    with pytest.raises(ProtocolError, match="exceeds the limit") as error:
        decode(parts, max_message_bytes=100)
    np.testing.assert_array_equal(error.value.frame_ids, [4, 5, 6])
    with pytest.raises(ProtocolError) as error:
        decode([b"garbage"])
    assert error.value.frame_ids is None


@pytest.mark.parametrize("change, reason", [
    ({"detector": START_FIELDS["detector"] | {"dtype": "int16"}}, "detector.dtype"),
    ({"scan": START_FIELDS["scan"] | {"frames_expected": 11}}, "frames_expected"),
    ({"scan": START_FIELDS["scan"] | {"pattern": "spiral"}}, "scan.pattern"),
    ({"encoding": "bslz4"}, "encoding"),
    ({"optics": "200 kV"}, "optics must be dict"),
])
def test_bad_series_start_is_rejected(change, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(_bytes(encode_series_start("s", 0, START_FIELDS | change)))


def test_bad_overview_and_end_are_rejected():
    image = np.zeros((4, 4), np.float32)
    with pytest.raises(ProtocolError, match="2×3"):
        decode(_bytes(encode_overview("s", 0, 0, image, 1.0, [[1, 0], [0, 1]], "after")))
    with pytest.raises(ProtocolError, match="acquired"):
        decode(_bytes(encode_overview("s", 0, 0, image, 1.0, [[1, 0, 0], [0, 1, 0]], "during")))
    with pytest.raises(ProtocolError, match="status"):
        decode(_bytes(encode_series_end("s", 0, "finished", 1, 0)))


def test_scan_orders():
    np.testing.assert_array_equal(scan_order((2, 3), "raster"), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_array_equal(scan_order((2, 3), "serpentine"), [[0, 0], [0, 1], [0, 2], [1, 2], [1, 1], [1, 0]])
