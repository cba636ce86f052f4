"""The phase-retrieval engine fanned out to worker processes over ZeroMQ equals the in-process engine."""

import numpy as np
import pytest
import torch

from simed_stream.fanout import PhasingFanout
from simed_stream.phasing.engine import PhaseRetrievalEngine

from test_engine import GEOMETRY, SETTINGS, toy_particle


def test_fanout_matches_the_engine_in_process():
    toys = [toy_particle(seed) for seed in range(3)]
    diffractions, images = np.stack([t[0] for t in toys]), np.stack([t[1] for t in toys])
    diffractions[2, 0, 0] = np.nan  # a bad particle is flagged there as here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker runs it: one particle, one thread
    try:
        engine = PhaseRetrievalEngine(GEOMETRY, SETTINGS, "cpu")
        expected = [engine(diffractions[i : i + 1], images[i : i + 1]) for i in range(3)]
    finally:
        torch.set_num_threads(threads)
    with PhasingFanout(workers=2) as fanout:
        result = fanout(SETTINGS, GEOMETRY, diffractions, images)
        again = fanout(SETTINGS, GEOMETRY, diffractions[:1], images[:1])  # batch after batch
    for i in range(2):
        np.testing.assert_array_equal(result.sigma_v[i], expected[i].sigma_v[0])
        np.testing.assert_array_equal(result.spread[i], expected[i].spread[0])
        assert result.r_free[i] == expected[i].r_free[0] and result.resolution_A[i] == expected[i].resolution_A[0]
    assert result.flags[:2] == [None, None] and "non-finite" in result.flags[2]
    np.testing.assert_array_equal(again.sigma_v[0], expected[0].sigma_v[0])


def test_fanout_flags_bad_particles_and_reports_a_bad_job_instead_of_hanging():
    from dataclasses import replace

    with PhasingFanout(workers=1, timeout_s=60) as fanout:
        flagged = fanout(SETTINGS, GEOMETRY, np.zeros((1, 5, 5)), np.zeros((1, 7, 7)))
        assert "low-res image is (7, 7)" in flagged.flags[0]
        impossible = replace(GEOMETRY, box_A=10.0)  # an object grid smaller than the image: the worker fails
        diffraction, image_lr, _ = toy_particle(0)
        with pytest.raises(RuntimeError, match="phasing worker failed"):
            fanout(SETTINGS, impossible, diffraction[None], image_lr[None])


def test_fanout_without_workers_times_out_instead_of_hanging():
    diffraction, image_lr, _ = toy_particle(0)
    with PhasingFanout(workers=0, timeout_s=1.5) as fanout:
        with pytest.raises(TimeoutError, match="no phasing worker"):
            fanout(SETTINGS, GEOMETRY, diffraction[None], image_lr[None])
