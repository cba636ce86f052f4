"""What a fake detector streams, whatever its wire format: one series as messages in sending
order. A capture replayed (`capture_replay.capture_series`), a synthetic scan
(`simulator.synthetic`) or a simulated specimen scan (`simulator.scan`) make one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class SeriesSource:
    """One series in sending order: `messages` yields (htype, recorded header or None, payload);
    payload is the series_start fields, (ids, scan_yx, t_ns, pixels) for frames, the overview
    dict for overview_image, and the recorded header dict (or None) for series_end."""

    series_id: str
    start_fields: dict
    pixel_mask: np.ndarray | None
    messages: Iterator[tuple[str, bytes | None, object]]
    frame_interval_s: float
    recorded_times_ns: np.ndarray | None = None
