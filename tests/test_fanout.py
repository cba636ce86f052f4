"""Classical phasing fanned out to worker processes over ZeroMQ equals the in-process result."""

import h5py
import numpy as np

from simed_stream.fanout import PhasingFanout
from simed_stream.phasing.classical import Geometry, HIOSettings, phase

SETTINGS = HIOSettings(hio_iterations=20, er_iterations=5)


def test_fanout_matches_in_process(physics_dataset):
    with h5py.File(physics_dataset, "r") as f:
        geometry = Geometry.from_attrs(f.attrs)
        jobs = [(f["diffraction"][i].astype(np.float64), f["image_lr"][i].astype(np.float64), geometry, SETTINGS)
                for i in range(3)]
    expected = [phase(d, lr, g, s) for d, lr, g, s in jobs]
    with PhasingFanout(workers=2) as pool:
        results = pool.map(None, jobs)
        again = pool.map(None, jobs[:1])  # the pool serves batch after batch
    assert len(results) == 3
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again[0], expected[0])


def test_fanout_reports_a_bad_job_instead_of_hanging(physics_dataset):
    with h5py.File(physics_dataset, "r") as f:
        geometry = Geometry.from_attrs(f.attrs)
    with PhasingFanout(workers=1, timeout_s=60) as pool:
        try:
            pool.map(None, [(np.zeros((5, 5)), np.zeros((7, 7)), geometry, SETTINGS)])
        except RuntimeError as error:
            assert "phasing worker failed" in str(error)
        else:
            raise AssertionError("a job the worker cannot phase must raise")


def test_fanout_without_workers_times_out_instead_of_hanging(physics_dataset):
    with h5py.File(physics_dataset, "r") as f:
        geometry = Geometry.from_attrs(f.attrs)
        job = (f["diffraction"][0].astype(np.float64), f["image_lr"][0].astype(np.float64), geometry, SETTINGS)
    with PhasingFanout(workers=0, timeout_s=1.5) as pool:
        try:
            pool.map(None, [job])
        except TimeoutError as error:
            assert "no phasing worker" in str(error)
        else:
            raise AssertionError("with nobody to take the job, map must time out")
