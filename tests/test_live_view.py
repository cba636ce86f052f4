"""What the live pipeline publishes for the page (`live/view.py`, `live/timeline.py`) stays
bounded and numbered; the page's images and JSON are what they claim; the `--web` settings
refuse bad input with the key and the rule named."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from simed_stream.cli import main
from simed_stream.live.settings import WebOptions
from simed_stream.live.timeline import Timeline
from simed_stream.live.view import GALLERY, OVERVIEWS_KEPT, SERIES_KEPT, LiveView
from simed_stream.protocol import SeriesStart
from simed_stream.records import Particle, PhasedParticle
from simed_stream.web.documents import encode
from simed_stream.web.images import binning, to_grey


def test_timeline_numbers_records_and_keeps_the_newest():
    timeline = Timeline(3)
    assert timeline.last == 0 and timeline.since(0) == ()
    for value in "abcde":
        timeline.append(value)
    assert timeline.records == ((3, "c"), (4, "d"), (5, "e")) and timeline.last == 5
    assert timeline.since(0) == timeline.records  # 1 and 2 are gone: what is kept
    assert timeline.since(3) == ((4, "d"), (5, "e")) and timeline.since(5) == () and timeline.since(9) == ()
    assert timeline.since(0, limit=2) == ((3, "c"), (4, "d"))
    assert timeline.extend([("f",), ("g",)]) == 7 and timeline.since(5) == ((6, "f"), (7, "g"))
    with pytest.raises(ValueError, match="at least one"):
        Timeline(0)


def _start(series_id: str, nav_shape=(2, 3)) -> SeriesStart:
    return SeriesStart(series_id, 0, {"scan": {"nav_shape": list(nav_shape), "frames_per_position": 2,
                                               "frames_expected": 2 * nav_shape[0] * nav_shape[1]}})


def test_series_views_are_bounded_and_count_positions_once():
    view = LiveView()
    first = view.open_series(_start("a"))
    for position, valid in ((0, True), (1, False), (0, False), (99, True), (-1, True)):
        first.position(position, valid)  # a position counts once; outside the scan: ignored
    assert (first.positions_valid, first.positions_incomplete, bytes(first.coverage)) == (1, 1, b"\1\2\0\0\0\0")
    first.closed()  # what never came is incomplete for good
    assert (first.positions_incomplete, bytes(first.coverage)) == (5, b"\1\2\2\2\2\2")
    for i in range(SERIES_KEPT + 5):
        view.open_series(_start(f"s{i}")).overview = np.zeros((4, 4))
    assert len(view.series) == SERIES_KEPT and view.series[-1].series_id == f"s{SERIES_KEPT + 4}"
    assert [s.key for s in view.series] == list(range(7, SERIES_KEPT + 7))
    view.open_series(_start("last"))
    kept = [s.overview is not None for s in view.series]
    assert sum(kept) == OVERVIEWS_KEPT - 1 and not any(kept[:-OVERVIEWS_KEPT]) and view.find_series(1) is None


def test_the_gallery_keeps_the_newest_and_the_timeline_every_resolution():
    view = LiveView()
    series = view.open_series(_start("g"))
    phased = [PhasedParticle(Particle(i, (1.0, 2.0), 3.0, (0, 1), 1.0, image_lr=np.ones((4, 4))), np.ones((4, 4)),
                             0.1, 0.2, float(i), 0.3) for i in range(GALLERY + 6)]
    series.phased(phased[:10])
    series.phased(phased[10:])
    assert [p.key for p in view.gallery] == list(range(7, GALLERY + 7))
    assert [p.index for p in view.gallery] == list(range(6, GALLERY + 6))
    assert [r[3] for r in view.resolution.records] == [float(i) for i in range(GALLERY + 6)]
    assert series.resolutions == tuple(float(i) for i in range(GALLERY + 6))


def test_warnings_and_errors_are_kept_with_their_exception():
    view = LiveView()
    logger = logging.getLogger("simed_stream.test_view")
    logger.addHandler(view.log_handler)
    try:
        logger.info("not kept")
        logger.warning("disk %s", "full" + "!" * 2000)
        try:
            raise OSError("no space")
        except OSError:
            logger.exception("series s failed")
    finally:
        logger.removeHandler(view.log_handler)
    (_, _, level, name, text), (_, _, level2, _, text2) = view.messages.records
    assert (level, name, len(text), text[:9]) == ("WARNING", "simed_stream.test_view", 1000, "disk full")
    assert (level2, text2) == ("ERROR", "series s failed (OSError: no space)")


def test_json_has_no_nan_and_images_are_stretched_grey():
    assert json.loads(encode({"a": float("nan"), "b": [1.5, float("inf")], "c": "x"})) == \
        {"a": None, "b": [1.5, None], "c": "x"}
    ramp = np.arange(1000.0).reshape(10, 100)  # percentiles 0.5 / 99.5 of 0..999: 4.995 / 994.005
    grey = to_grey(ramp)
    assert grey.dtype == np.uint8 and grey[0, 0] == 0 and grey[-1, -1] == 255
    assert grey[5, 0] == round((500 - 4.995) / (994.005 - 4.995) * 255)
    assert binning((2050, 100)) == 3 and binning((1024, 10)) == 1
    big = np.arange(2050 * 100, dtype=np.float64).reshape(2050, 100)
    assert to_grey(big).shape == (683, 33)
    with_nan = np.full((4, 4), np.nan)
    assert (to_grey(with_nan) == 0).all() and (to_grey(np.ones((3, 3))) == 0).all()
    with pytest.raises(ValueError, match="2-D"):
        to_grey(np.zeros(5))


@pytest.mark.parametrize("value, words", [("localhost", "expected HOST:PORT"), ("1.2.3.4:70000", "port 0 to 65535"),
                                          ("host:port", "expected HOST:PORT"), ("::1:80", "expected HOST:PORT")])
def test_bad_web_addresses_are_refused_by_name(value, words, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--web", value]) == 2
    error = capsys.readouterr().err
    assert "key 'web'" in error and words in error and repr(value) in error


def test_web_options_parse_and_refuse_short_tokens():
    assert WebOptions(web="127.0.0.1:8765").web_address() == ("127.0.0.1", 8765)
    assert WebOptions(web="[::1]:0").web_address() == ("::1", 0) and WebOptions().web_address() is None
    assert WebOptions(web="0.0.0.0:1", web_token="t" * 16, web_hold_s=2).web_options() == \
        {"web": "0.0.0.0:1", "web_token": "t" * 16, "web_hold_s": 2.0}
    from simed_stream.errors import ConfigError

    with pytest.raises(ConfigError, match="web_token.*at least 16"):
        WebOptions(web_token="short")
    with pytest.raises(ConfigError, match="web_token.*pattern"):
        WebOptions(web_token="a token with spaces!")
