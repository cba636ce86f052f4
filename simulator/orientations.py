"""Rotations uniformly distributed on SO(3), stored as unit quaternions (w, x, y, z)."""

from __future__ import annotations

import numpy as np


def uniform_quaternions(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` quaternions uniform on SO(3) (Shoemake's subgroup algorithm), with w >= 0."""
    u1, u2, u3 = rng.random((3, count))
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    q = np.stack(
        [b * np.cos(2 * np.pi * u3), a * np.sin(2 * np.pi * u2), a * np.cos(2 * np.pi * u2), b * np.sin(2 * np.pi * u3)],
        axis=1,
    )
    q[q[:, 0] < 0] *= -1  # q and -q are the same rotation; keep one canonical sign
    return q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3×3 rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotate(positions_A: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rotate (n, 3) positions about the origin."""
    return positions_A @ quaternion_to_matrix(q).T
