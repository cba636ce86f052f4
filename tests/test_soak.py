"""A minute of soak (`tools/soak.py --seconds 60`): series after series at 2 000 frames/s with
mixed faults into the real receiver, every series accounted exactly, no leak.

The bounds, and why they catch a leak without flaking on a busy machine:
- RSS growth < 50 MB (the issue's goal for 30 minutes): growth is the median RSS of the last
  third after the warm-up less the first third's, so the swings of the data in flight (bounded
  queues of 8 MiB messages, the positions being summed: ±60 MB from one second to the next)
  mostly cancel (runs without a leak: -23, -14 MB). A leak of a frame per message (~4 MB/s at
  full rate) is caught; a slower one passes this minute: the 30-minute run (docs/capture.md)
  is the one for those.
- descriptors +2 at most: at the end the detector's connection may be up, reconnecting or gone
  (it disconnects every fifth series); one leaked per series would be ~+50.
- threads +1 at most: the receiver's threads are fixed (receive, process, compress, ZeroMQ's I/O
  and reaper); one per series or per reconnection would be ~+50 or ~+10.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_minute_at_2000_frames_per_second_is_accounted_exactly_without_leaks():
    # a fixed mmap threshold: freed frame buffers go back to the system at once, so RSS follows
    # live memory instead of glibc's heap, which grows and trims in a 100-MB sawtooth that a
    # minute cannot average out (the 30-minute run in the docs keeps glibc's defaults)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--seconds", "60"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.stdout.strip(), done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    assert result["accounting_balanced"], result["unbalanced_series"]
    assert result["matches_detector"], result["disagreeing_series"]
    assert done.returncode == 0 and result["detector_exit"] == 0
    assert result["series"] >= 6  # several series, of three shapes, two of them with a disconnect
    # the faults happened and were counted (not a quiet stream that balances trivially)
    assert min(result["rejected"], result["missing"], result["dropped_at_source"], result["duplicates"]) > 0
    # on a shared machine back-pressure slows the detector (seen: 250 frames/s with the whole suite
    # and a 30-minute soak beside it); this checks accounting and leaks, not throughput
    assert result["frames"] >= 10_000, "the detector hardly streamed: no soak"
    assert result["rss_growth_MB"] < 50
    assert result["open_fds_growth"] <= 2
    assert result["threads_growth"] <= 1
