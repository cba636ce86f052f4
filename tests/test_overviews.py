"""The microscope's overview image: MRC and TIFF files read as written, a watched folder, `simed
overview` to the receiver's endpoint, which series an overview goes to, and what is refused."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import tifffile

from detector_streams import free_port
from simed_stream.cli import main
from simed_stream.detectors.simed.fake import FakeDetector, FaultPlan
from simed_stream.errors import SimedError
from simed_stream.image_files import read_overview, write_overview
from simed_stream.ingest import Receiver, ReceiverSettings
from simulator.synthetic import synthetic_series

AFFINE = np.array([[4.0, 0.0, 1.5], [0.0, 4.0, 2.5]])


def test_files_read_as_written(tmp_path):
    image = np.random.default_rng(0).normal(size=(30, 40)).astype(np.float32)
    mrc = read_overview(write_overview(tmp_path / "a.mrc", image, 2.5))
    assert mrc.pixel_size_A == pytest.approx(2.5) and mrc.affine is None
    np.testing.assert_array_equal(mrc.image, image)
    tif = read_overview(write_overview(tmp_path / "b.tif", image, 3.0, AFFINE))
    assert tif.pixel_size_A == 3.0 and np.array_equal(tif.affine, AFFINE)
    np.testing.assert_array_equal(tif.image, image)
    # a camera's TIFF: resolution tags in pixels per centimetre (1e7 px/cm = 10 Å)
    tifffile.imwrite(tmp_path / "c.tif", image, resolution=(1e7, 1e7), resolutionunit="CENTIMETER")
    assert read_overview(tmp_path / "c.tif").pixel_size_A == pytest.approx(10.0)
    (tmp_path / "d.mrc").write_bytes(b"not an mrc")
    with pytest.raises(SimedError, match="d.mrc is not a readable MRC"):
        read_overview(tmp_path / "d.mrc")


def _series(detector_endpoint, series_id):
    return synthetic_series(series_id, nav_shape=(3, 3), frames_per_position=1, sig_shape=(32, 32), batch_frames=4)


def _receive(tmp_path, overview: dict, act, series_ids=("s1",)):
    """A simed-stream/1 series without its overview (the detector withholds it); `act(receiver)`
    runs once the first series is open. Returns the summaries."""
    endpoint = f"ipc://{tmp_path}/d.sock"
    settings = ReceiverSettings(capture_dir=tmp_path / "captures", data_endpoint=endpoint, overview_grace_s=3.0,
                                overview=overview)
    with Receiver(settings) as receiver, FakeDetector(endpoint, None, rate_fps=20,
                                                      faults=FaultPlan.parse("no_overview")) as detector:
        act(receiver, "before")
        detector.run([lambda i=i: _series(endpoint, i) for i in series_ids[:1]])
        act(receiver, "after")
        detector.run([lambda i=i: _series(endpoint, i) for i in series_ids[1:]])
        return receiver.wait_for_series(len(series_ids), 30)


def _overview_of(summary):
    with h5py.File(summary.path) as f:
        names = list(f.get("overviews", {}))
        return [json.loads(f["overviews"][n].attrs["header"]) for n in names]


def test_a_dropped_file_goes_to_the_series_without_one(tmp_path):
    folder = tmp_path / "overviews"

    def act(receiver, when):
        if when == "after":
            write_overview(folder / "survey.tif", np.ones((12, 12), np.float32), 5.0, AFFINE)

    summary, = _receive(tmp_path, {"dir": folder}, act)
    header, = _overview_of(summary)
    assert summary.overview and header["series_id"] == "s1" and header["pixel_size_A"] == 5.0
    assert header["affine_scan_to_overview"] == AFFINE.tolist() and header["acquired"] == "after"


def test_an_overview_taken_before_waits_for_the_next_series(tmp_path):
    folder = tmp_path / "overviews"
    folder.mkdir()

    def act(receiver, when):
        if when == "before":
            time.sleep(0.3)  # the watcher has listed the folder: the file is new to it
            write_overview(folder / "before.mrc", np.ones((12, 12), np.float32), 5.0)
            time.sleep(1.5)

    summary, = _receive(tmp_path, {"dir": folder, "acquired": "before", "affine": tuple(AFFINE.ravel())}, act)
    header, = _overview_of(summary)
    assert header["acquired"] == "before" and header["pixel_size_A"] == pytest.approx(5.0)
    assert header["affine_scan_to_overview"] == AFFINE.tolist()  # the settings' (an MRC has none)


def test_simed_overview_sends_to_the_named_series(tmp_path, capsys):
    port = free_port()
    path = write_overview(tmp_path / "named.mrc", np.ones((12, 12), np.float32), 4.0)

    def act(receiver, when):
        if when == "after":
            assert main(["overview", str(path), "--series", "s1", "--endpoint", f"tcp://127.0.0.1:{port}",
                         "--affine", "4,0,1.5,0,4,2.5"]) == 0

    first, second = _receive(tmp_path, {"endpoint": f"tcp://127.0.0.1:{port}"}, act, ("s1", "s2"))
    assert first.overview and not second.overview
    assert "sent to" in capsys.readouterr().out


def test_an_overview_without_affine_is_refused_saying_why(tmp_path):
    folder = tmp_path / "overviews"

    def act(receiver, when):
        if when == "after":
            write_overview(folder / "bare.mrc", np.ones((12, 12), np.float32), 5.0)
            deadline = time.monotonic() + 10
            while not receiver.status()["rejected_messages"] and time.monotonic() < deadline:
                time.sleep(0.1)

    summary, = _receive(tmp_path, {"dir": folder}, act)
    assert not summary.overview
    with h5py.File(summary.path) as f:
        reasons = [r.decode() if isinstance(r, bytes) else r for r in f["rejections/reason"][:]]
    assert any("no scan → overview affine" in r for r in reasons), reasons
