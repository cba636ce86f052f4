"""End to end: one simulated specimen scan (abTEM particles, `simed simulate scan`) through the live
pipeline three ways — as simed-stream/1, as Merlin frames and as DECTRIS stream v1 frames with
the overview dropped as an MRC file into the watched folder — gives the same particle stack."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile

from simed_stream.cli.replay import replay_capture
from simed_stream.live.settings import LiveSettings


@pytest.fixture(scope="module")
def integer_scan(physics_dataset, tmp_path_factory):
    """A 5×5 scan at 1e7 electrons per position — whole counts below 2**24, which a 24-bit Merlin
    carries — captured as uint32 frames, the type every detector here sends (the simulator's
    float32 counts, cast; the capture keeps its overview and pixel mask)."""
    from simulator.scan import ScanSettings, simulate_scan

    folder = tmp_path_factory.mktemp("integer-scan")
    scan = simulate_scan(physics_dataset, folder / "scan.h5", ScanSettings(
        scan_shape=(5, 5), particles=4, frames_per_position=2, seed=1, electrons_per_position=1e7))
    return _as_uint32(scan, folder / "uint32")


def _as_uint32(scan, folder):
    from simed_stream.capture_replay import capture_series
    from simed_stream.detectors.series_source import SeriesSource
    from simed_stream.detectors.simed.fake import FakeDetector
    from simed_stream.ingest import Receiver, ReceiverSettings

    source = capture_series(scan)
    fields = dict(source.start_fields, detector=dict(source.start_fields["detector"], dtype="<u4", bit_depth=32))

    def messages():
        for htype, _recorded, payload in source.messages:
            if htype == "frames":
                ids, yx, stamps, pixels = payload
                assert np.array_equal(pixels, np.round(pixels)) and pixels.max() < 2**24
                payload = (ids, yx, stamps, pixels.astype("<u4"))
            yield htype, None, fields if htype == "series_start" else payload

    endpoint = f"ipc://{folder}.sock"
    with FakeDetector(endpoint, control_endpoint=None, rate_fps="max") as detector, \
            Receiver(ReceiverSettings(capture_dir=folder, data_endpoint=endpoint, overview_grace_s=0.5)) as receiver:
        detector.run([SeriesSource(source.series_id, fields, source.pixel_mask, messages(), source.frame_interval_s)])
        summary, = receiver.wait_for_series(1, 60)
    assert summary.accounting["received"] == 50 and summary.overview
    return summary.path


def _stack(result):
    stacks = [mrcfile.read(path) for path in sorted(result.out_dir.glob("particles_*.mrcs"))]
    star = starfile.read(result.out_dir / "particles.star", always_dict=True)["particles"]
    return np.concatenate(stacks), star


@pytest.mark.slow
def test_merlin_and_dectris_give_the_stack_simed_stream_gives(integer_scan, tiny_phaser, tmp_path):
    stacks = {}
    for source in ("simed", "merlin", "dectris"):
        settings = LiveSettings(out=tmp_path / source, model=tiny_phaser, device="cpu", batch_size=2,
                                overview_timeout_s=5.0, source=source,
                                **({} if source == "simed" else {"scan": {"shape": (5, 5)}}))
        pipeline = replay_capture(integer_scan, settings, "max")
        result, = pipeline.results
        assert result.status == "phased" and result.phased >= 2 and pipeline.errors == [], (source, result)
        assert result.accounting["received"] == 50 and result.accounting["missing"] == 0, result.accounting
        stacks[source] = _stack(result)
    images, star = _by_pick(*stacks["simed"])
    for source in ("merlin", "dectris"):
        other_images, other_star = _by_pick(*stacks[source])
        columns = [c for c in star.columns if c not in ("rlnImageName", "rlnMicrographName")]
        differ = [c for c in columns if not other_star[c].equals(star[c])]
        assert not differ, (source, star[differ].to_string(), other_star[differ].to_string())
        np.testing.assert_array_equal(other_images, images, err_msg=source)


def _by_pick(images, star):
    """Particles in the order of their picks (batches may form in another order)."""
    order = np.lexsort((star["rlnCoordinateX"].to_numpy(), star["rlnCoordinateY"].to_numpy()))
    return images[order], star.iloc[order].reset_index(drop=True)
