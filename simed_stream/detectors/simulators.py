"""The vendor detectors' simulators by source name (`simed detector --source`, `simed replay
--source`, `tools/bench_ingest.py`)."""

from __future__ import annotations

from pathlib import Path

from simed_stream.detectors.vendor_sim import VendorSimulator

VENDOR_SOURCES = ("dectris", "merlin", "serval")


def make_simulator(source: str, endpoint: str, rate_fps: float | str = "max", overview_dir: Path | None = None,
                   flyback_frames: int = 0, start_frame: int = 0, dectris_version: int = 1,
                   compression: str = "bslz4", byte_order: str = "big", serval_variant: str = "new") -> VendorSimulator:
    """A simulator bound to (or, Serval's connect@, connecting to) `endpoint`."""
    options = dict(rate_fps=rate_fps, overview_dir=overview_dir, flyback_frames=flyback_frames, start_frame=start_frame)
    if source == "dectris":
        from simed_stream.detectors.dectris.sim import DectrisSimulator

        return DectrisSimulator(endpoint, dectris_version, compression, **options)
    if source == "merlin":
        from simed_stream.detectors.merlin.sim import MerlinSimulator

        return MerlinSimulator(endpoint, **options)
    if source == "serval":
        from simed_stream.detectors.serval.sim import ServalSimulator

        return ServalSimulator(endpoint, serval_variant, byte_order, **options)
    raise ValueError(f"no simulator for source {source!r}; vendor sources: {', '.join(VENDOR_SOURCES)}")
