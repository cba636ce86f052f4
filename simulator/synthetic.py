"""A synthetic scan for the fake detectors: a drifting direct beam, Poisson counts, hot pixels."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

import numpy as np

from simed_stream.detectors.series_source import SeriesSource
from simed_stream.protocol import scan_order


def synthetic_series(series_id: str, nav_shape=(16, 16), frames_per_position: int = 4, sig_shape=(256, 256),
                     dwell_s: float = 5e-4, batch_frames: int = 32, seed: int = 0, beam_counts: float = 2e5,
                     background_counts: float = 0.02, hot_pixels: int = 4, drift_px=(2.0, 3.0),
                     pattern: str = "raster") -> SeriesSource:
    """A synthetic scan: a direct-beam disc drifting linearly across the scan (descan), Poisson
    counts clipped to 12 bits, a few hot pixels. Pixels come from a small pool of pre-computed
    frames (one per integer drift offset and sub-frame) so the generator outruns any receiver."""
    rng = np.random.default_rng(seed)
    h, w = sig_shape
    ny, nx = nav_shape
    order = scan_order(nav_shape, pattern)
    hot = rng.integers(0, [h, w], size=(hot_pixels, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    pool: dict[tuple[int, int, int], np.ndarray] = {}

    def frame(dy: int, dx: int, sub: int) -> np.ndarray:
        key = (dy, dx, sub % 4)
        if key not in pool:
            cy, cx = h // 2 + dy, w // 2 + dx
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).astype(np.float64)
            mean = background_counts + beam_counts * disc / disc.sum()
            pixels = np.minimum(rng.poisson(mean), 4095)
            pixels[hot[:, 0], hot[:, 1]] = 4095
            pool[key] = pixels.astype("<u2")
        return pool[key]

    def offsets(y: int, x: int) -> tuple[int, int]:
        return int(round(drift_px[0] * y / max(ny - 1, 1))), int(round(drift_px[1] * x / max(nx - 1, 1)))

    n = ny * nx * frames_per_position
    start_fields = _synthetic_start_fields(sig_shape, nav_shape, pattern, frames_per_position, dwell_s, seed)
    cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def batches():
        t0 = time.time_ns()
        for first in range(0, n, batch_frames):
            ids = np.arange(first, min(first + batch_frames, n), dtype=np.uint64)
            positions = order[ids.astype(np.int64) // frames_per_position]
            keys = tuple(offsets(int(y), int(x)) + (int(i) % frames_per_position,) for (y, x), i in zip(positions, ids))
            pixels = cache.get(keys)
            if pixels is None:
                pixels = np.stack([frame(*key) for key in keys])
                cache[keys] = pixels
                if len(cache) > 32:
                    cache.popitem(last=False)
            stamps = (t0 + ids * int(dwell_s / frames_per_position * 1e9)).astype(np.uint64)
            yield ids, positions.astype(np.int32), stamps, pixels

    overview_image = rng.normal(1.0, 0.1, size=(4 * ny, 4 * nx)).astype(np.float32)
    overview = {"overview_id": 0, "image": overview_image, "pixel_size_A": 5.0,
                "affine": [[4.0, 0.0, 1.5], [0.0, 4.0, 1.5]], "acquired": "after"}

    def messages():
        yield "series_start", None, start_fields
        for batch in batches():
            yield "frames", None, batch
        yield "overview_image", None, overview
        yield "series_end", None, None

    mask = np.zeros(sig_shape, np.uint8)  # the detector's own calibration knows its hot pixels
    mask[hot[:, 0], hot[:, 1]] = 1
    return SeriesSource(series_id, start_fields, mask, messages(), dwell_s / frames_per_position)


def _synthetic_start_fields(sig_shape, nav_shape, pattern: str, frames_per_position: int, dwell_s: float,
                            seed: int) -> dict:
    (h, w), (ny, nx) = sig_shape, nav_shape
    return {
        "unique_id": uuid.uuid4().hex,
        "detector": {"model": "ASI Cheetah (simulated)", "sig_shape": [h, w], "dtype": "<u2", "bit_depth": 12,
                     "pixel_pitch_um": 55.0},
        "scan": {"nav_shape": [ny, nx], "pattern": pattern, "frames_per_position": frames_per_position,
                 "dwell_s": dwell_s, "step_A": 20.0, "rotation_deg": 0.0, "frames_expected": ny * nx * frames_per_position},
        "optics": {"energy_eV": 200e3, "camera_length_mm": 500.0, "convergence_mrad": 0.05, "mrad_per_px": 0.179},
        "microscope": {"model": "JEOL (simulated)"},
        "trigger_mode": "internal", "encoding": "raw", "user_data": {"synthetic": True, "seed": seed},
    }
