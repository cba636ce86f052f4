import numpy as np
from scipy.spatial.transform import Rotation

from simulator.orientations import quaternion_to_matrix, rotate, uniform_quaternions


def test_quaternions_are_unit_canonical_and_seeded():
    a = uniform_quaternions(100, np.random.default_rng(5))
    b = uniform_quaternions(100, np.random.default_rng(5))
    c = uniform_quaternions(100, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-12)
    assert (a[:, 0] >= 0).all()


def test_matrix_matches_scipy():
    q = uniform_quaternions(50, np.random.default_rng(1))
    reference = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy wants (x, y, z, w)
    ours = np.stack([quaternion_to_matrix(x) for x in q])
    np.testing.assert_allclose(ours, reference, atol=1e-12)
    positions = np.random.default_rng(2).normal(size=(10, 3))
    np.testing.assert_allclose(rotate(positions, q[0]), positions @ reference[0].T, atol=1e-12)


def test_rotations_are_uniform_on_so3():
    q = uniform_quaternions(20000, np.random.default_rng(0))
    matrices = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()
    # Haar measure: E[R] = 0 and the rotation angle has density (1 - cos θ) / π.
    assert np.abs(matrices.mean(axis=0)).max() < 0.02
    angles = 2 * np.arccos(np.clip(q[:, 0], -1, 1))
    edges = np.linspace(0, np.pi, 7)
    expected = np.diff((edges - np.sin(edges)) / np.pi) * len(q)
    observed, _ = np.histogram(angles, edges)
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected))
