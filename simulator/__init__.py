"""Physics simulator for simED: abTEM training triplets, synthetic scans, the fake detector."""

from pathlib import Path

#: Small structures shipped with the package, for the demo and the tests.
BUNDLED_DATA = Path(__file__).resolve().parent / "data"
