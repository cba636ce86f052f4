"""The live path end to end: fake detector → ZeroMQ (ipc) → Receiver → LivePipeline → stack/STAR.

Real sockets, real HDF5 captures, real torch; the model is an untrained tiny U-Net with a proper
card (phasing quality is not what these tests look at: where every byte and particle goes is)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (decodes the Blosc frames)
import numpy as np
import pytest
import starfile

from simed_stream.capture import RECEIVED, CaptureReader
from simed_stream.capture_replay import capture_series
from simed_stream.chain import NO_OVERVIEW, SeriesResult
from simed_stream.cli import main
from simed_stream.cli.replay import replay_capture
from simed_stream.detectors.simed.fake import FakeDetector, FaultPlan
from simed_stream.live.pipeline import LivePipeline
from simed_stream.live.settings import LiveSettings
from simed_stream.live.status import status_line
from simed_stream.stack import read_stack

from conftest import run_with_deadline

SCAN_SHAPE, FRAMES_PER_POSITION = (5, 5), 2
FRAMES = SCAN_SHAPE[0] * SCAN_SHAPE[1] * FRAMES_PER_POSITION


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def scan_frames(scan) -> np.ndarray:
    with h5py.File(scan, "r") as f:
        return f["frames"][:]


@pytest.fixture(scope="module")
def phaser(tiny_phaser):
    """One phaser for the tests that build a LivePipeline themselves (loading is the slow part)."""
    from simed_stream.phasing.inference import Phaser

    return Phaser(tiny_phaser, "cpu")


class Detector(threading.Thread):
    """A FakeDetector streaming `sources` in a thread; `error` keeps what went wrong."""

    def __init__(self, endpoint, sources, faults="", rate_fps="max"):
        super().__init__(name="test-detector", daemon=True)
        self.endpoint, self.sources, self.rate_fps = endpoint, sources, rate_fps
        self.faults = FaultPlan.parse(faults)
        self.report, self.error = None, None

    def run(self):
        try:
            with FakeDetector(self.endpoint, control_endpoint=None, rate_fps=self.rate_fps, faults=self.faults,
                              seed=1, peer_timeout_s=20) as detector:
                self.report = detector.run(self.sources)
        except Exception as error:  # noqa: BLE001  (the test asserts on it)
            self.error = error


def live_settings(tmp_path, **overrides) -> LiveSettings:
    values = {"out": tmp_path / "out", "model": Path("unused"), "data_endpoint": f"ipc://{tmp_path}/data.sock",
              "device": "cpu", "batch_size": 2, "batch_latency_s": 0.2,
              "overview_timeout_s": 1.0, "series_timeout_s": 3.0, "status_interval_s": 0.2}
    return LiveSettings(**(values | overrides))


def run_live(tmp_path, phaser, sources, faults="", max_series=1, rate_fps="max", **overrides):
    settings = live_settings(tmp_path, max_series=max_series, **overrides)
    pipeline = LivePipeline(settings, phaser=phaser)
    detector = Detector(settings.data_endpoint, sources, faults, rate_fps)
    detector.start()
    results = run_with_deadline(pipeline, 60)
    detector.join(timeout=20)
    assert not detector.is_alive() and detector.error is None, detector.error
    return pipeline, results, detector


def captured(out: Path) -> list[Path]:
    return sorted((out / "captures").glob("*.h5"))


def check_capture_complete(path: Path, frames: np.ndarray | None = None) -> dict:
    with CaptureReader(path) as capture:
        assert capture.file.attrs["state"] == "closed"
        accounting = capture.accounting
        assert accounting["frames_expected"] == FRAMES
        assert accounting["received"] == FRAMES and accounting["missing"] == 0
        assert (capture.frame_status == RECEIVED).all()
        if frames is not None:
            np.testing.assert_array_equal(capture.file["frames"][:], frames)
    return accounting


def star_rows(series_dir: Path) -> int:
    blocks = starfile.read(series_dir / "particles.star", always_dict=True)
    return len(blocks["particles"])


# ------------------------------------------------------------------ tests

def test_replay_capture_end_to_end(scan, scan_frames, tiny_phaser, tmp_path):
    out = tmp_path / "out"
    settings = LiveSettings(out=out, model=tiny_phaser, device="cpu", batch_size=2, overview_timeout_s=5.0)
    started = time.perf_counter()
    pipeline = replay_capture(scan, settings, "max")
    wall_s = time.perf_counter() - started
    assert len(pipeline.results) == 1 and pipeline.errors == []
    result = pipeline.results[0]
    assert result.status == "phased", result
    assert result.picks >= 1 and result.phased >= 1
    # the capture: every frame, bit for bit
    [capture] = captured(out)
    check_capture_complete(capture, scan_frames)
    # the stack: one STAR row per phased particle, one .mrcs per batch of two
    assert result.out_dir.parent == out
    assert star_rows(result.out_dir) == result.phased
    stacks = sorted(result.out_dir.glob("particles_*.mrcs"))
    assert 2 <= len(stacks) <= result.phased  # batches of at most 2 (one goes early after batch_latency_s)
    saved = json.loads((result.out_dir / "result.json").read_text())
    assert saved["status"] == "phased" and saved["phased"] == result.phased
    # from the overview's arrival to the last particle in the stack: all the phasing happened
    # inside that interval, and the interval inside the run
    latency, seconds = saved["seconds"]["overview_to_last_particle"], saved["seconds"]
    assert seconds["engine"] + seconds["network"] < latency < wall_s
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["ingest"]["frames_received"] == FRAMES
    assert status["ingest"]["frames_missing"] == 0 and status["ingest"]["frames_dropped_at_source"] == 0
    assert status["pipeline"]["particles_phased"] == result.phased
    assert status["pipeline"]["particles_found"] == result.picks
    assert status["pipeline"]["series_open"] == 0 and status["pipeline"]["series_done"] == 1
    assert status["series"][0]["status"] == "phased"


def write_yaml(path: Path, **values) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in values.items()}))
    return path


def test_simed_run_with_a_config_file(scan, scan_frames, tiny_phaser, tmp_path, capsys):
    endpoint = f"ipc://{tmp_path}/data.sock"
    config = write_yaml(tmp_path / "live.yaml", out=tmp_path / "out", data_endpoint=endpoint, model=tiny_phaser,
                        device="cpu", max_series=1, batch_size=2, overview_timeout_s=2)
    detector = Detector(endpoint, [capture_series(scan)])
    detector.start()
    code = main(["run", "--config", str(config)])
    detector.join(timeout=20)
    out = capsys.readouterr().out
    assert code == 0, out
    assert detector.error is None
    assert "series scan: phased" in out
    check_capture_complete(captured(tmp_path / "out")[0], scan_frames)
    series_dir = tmp_path / "out" / "scan"
    assert star_rows(series_dir) == json.loads((series_dir / "result.json").read_text())["phased"] > 0
    assert json.loads((tmp_path / "out" / "status.json").read_text())["state"] == "stopped"


def test_simed_run_names_an_unknown_config_key(tiny_phaser, tmp_path, capsys):
    config = write_yaml(tmp_path / "live.yaml", out=tmp_path / "out", model=tiny_phaser, batch_sise=2)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "batch_sise" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_overview_keeps_the_capture_and_says_not_phased(scan, scan_frames, tiny_phaser, tmp_path, capsys):
    endpoint = f"ipc://{tmp_path}/data.sock"
    config = write_yaml(tmp_path / "live.yaml", out=tmp_path / "out", data_endpoint=endpoint, model=tiny_phaser,
                        device="cpu", max_series=1, batch_size=2, overview_timeout_s=0.5)
    detector = Detector(endpoint, [capture_series(scan)], faults="no_overview")
    detector.start()
    code = main(["run", "--config", str(config)])
    detector.join(timeout=20)
    assert detector.error is None and "overview withheld" in detector.report.events
    assert code == 1  # not every series phased
    assert f"series scan: {NO_OVERVIEW}" in capsys.readouterr().out
    [capture] = captured(tmp_path / "out")
    check_capture_complete(capture, scan_frames)  # every frame kept, for `simed reprocess` later
    with h5py.File(capture, "r") as f:
        assert "overviews" not in f or len(f["overviews"]) == 0
    saved = json.loads((tmp_path / "out" / "scan" / "result.json").read_text())
    assert saved["status"] == NO_OVERVIEW and saved["phased"] == 0
    assert any("captures/" in note for note in saved["notes"])
    assert not (tmp_path / "out" / "scan" / "particles.star").exists()


def test_an_overview_late_but_within_the_timeout_is_used(scan, phaser, tmp_path):
    _pipeline, results, detector = run_live(tmp_path, phaser, [capture_series(scan)], faults="late_overview=0.5",
                                           overview_timeout_s=3.0)
    assert any("overview sent" in event for event in detector.report.events)
    [result] = results
    assert result.status == "phased" and result.phased > 0


def test_two_series_one_after_the_other(scan, scan_b, phaser, tmp_path):
    pipeline, results, _ = run_live(tmp_path, phaser, [capture_series(scan), capture_series(scan_b)],
                                    max_series=2)
    assert [r.series_id for r in results] == ["scan", "scan-b"]
    assert all(r.status == "phased" and r.phased > 0 for r in results), results
    assert results[0].out_dir != results[1].out_dir
    for r in results:
        assert star_rows(r.out_dir) == r.phased
        assert set(starfile.read(r.out_dir / "particles.star", always_dict=True)["particles"]
                   ["rlnMicrographName"].astype(str)) == {r.series_id}
    captures = captured(tmp_path / "out")
    assert [c.name for c in captures] == ["scan-b.h5", "scan.h5"]
    for capture in captures:
        check_capture_complete(capture)
    status = pipeline.status()
    assert status["ingest"]["frames_received"] == 2 * FRAMES
    assert status["pipeline"]["series_done"] == 2
    assert status["pipeline"]["particles_phased"] == sum(r.phased for r in results)


def test_a_series_id_seen_again_in_one_run_is_rejected_not_mixed_in(scan, phaser, tmp_path):
    """docs/protocol.md: a series_start's id must be new; a repeat is rejected, the first untouched."""
    settings = live_settings(tmp_path)
    pipeline = LivePipeline(settings, phaser=phaser)
    detector = Detector(settings.data_endpoint, [capture_series(scan), capture_series(scan)])
    detector.start()
    threading.Thread(target=lambda: (detector.join(30), time.sleep(1.5), pipeline.stop()), daemon=True).start()
    results = run_with_deadline(pipeline, 60)
    assert detector.error is None
    [result] = results
    assert result.status == "phased" and star_rows(result.out_dir) == result.phased
    [capture] = captured(tmp_path / "out")
    check_capture_complete(capture)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["ingest"]["rejected_messages"] >= 3  # its start, frames and end
    assert status["ingest"]["frames_received"] == FRAMES


def test_a_second_run_into_the_same_folder_never_overwrites(scan, phaser, tmp_path):
    first = run_live(tmp_path, phaser, [capture_series(scan)])[1][0]
    star_before = (first.out_dir / "particles.star").read_bytes()
    second = run_live(tmp_path, phaser, [capture_series(scan)])[1][0]
    assert second.status == "phased" and second.out_dir == tmp_path / "out" / "scan-2"
    assert (first.out_dir / "particles.star").read_bytes() == star_before
    assert [c.name for c in captured(tmp_path / "out")] == ["scan-2.h5", "scan.h5"]


def test_detector_disconnect_mid_series_loses_nothing(scan, scan_frames, phaser, tmp_path):
    _pipeline, results, detector = run_live(tmp_path, phaser, [capture_series(scan)], faults="disconnect=1")
    assert any("disconnect" in event for event in detector.report.events)
    [result] = results
    assert result.status == "phased" and result.phased > 0 and not result.flagged
    accounting = check_capture_complete(captured(tmp_path / "out")[0], scan_frames)
    assert accounting["received"] == accounting["frames_expected"] == FRAMES


def test_stop_midway_leaves_a_closed_consistent_capture(scan, phaser, tmp_path):
    import zmq

    settings = live_settings(tmp_path)
    statuses = []
    pipeline = LivePipeline(settings, phaser=phaser, on_status=statuses.append)
    # 20 frames/s: the first message (32 frames) at once, the second 1.6 s later
    detector = Detector(settings.data_endpoint, [capture_series(scan)], rate_fps=20)
    detector.start()
    runner = threading.Thread(target=lambda: statuses.append(("results", pipeline.run())), daemon=True)
    runner.start()
    deadline = time.monotonic() + 20
    while pipeline.receiver.status()["frames_received"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    pipeline.stop()  # what Ctrl-C does in `simed run`
    runner.join(timeout=30)
    assert not runner.is_alive(), "run() did not return after stop()"
    # let the detector finish into a throwaway receiver rather than wait out its send timeouts
    context = zmq.Context()
    drain = context.socket(zmq.PULL)
    drain.connect(settings.data_endpoint)
    detector.join(timeout=20)
    drain.close(0)
    context.term()
    assert not detector.is_alive() and detector.error is None

    [capture] = captured(tmp_path / "out")
    with CaptureReader(capture) as reader:
        assert reader.file.attrs["state"] == "closed" and reader.file.attrs["end_status"] == "incomplete"
        accounting, frame_status = reader.accounting, reader.frame_status
        assert 0 < accounting["received"] < FRAMES
        assert accounting["received"] == int((frame_status == RECEIVED).sum())
        assert accounting["missing"] == int((frame_status == 0).sum()) == FRAMES - accounting["received"]
        received = np.flatnonzero(frame_status == RECEIVED)
        with h5py.File(scan, "r") as original:
            np.testing.assert_array_equal(reader.frames(received), original["frames"][received])
    [result] = statuses[-1][1]
    assert result.status == NO_OVERVIEW  # stopped before the overview came
    assert any("stopped" in note for note in result.notes)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "stopped" and status["ingest"]["frames_received"] == accounting["received"]
    assert status["ingest"]["frames_missing"] == accounting["missing"]
    assert status["pipeline"]["series_open"] == 0


STATUS_KEYS = {"ingest": ["frames_per_s", "frames_received", "frames_rejected", "frames_dropped_at_source",
                          "frames_missing", "rejected_messages", "duplicates", "msg_seq_gaps", "queue_depth",
                          "queue_capacity", "lag_s", "internal_errors"],
               "pipeline": ["series_open", "series_done", "particles_found", "particles_phased",
                            "particles_flagged", "phasing_queue", "event_queue", "cached_bytes"]}


def test_status_while_running_and_after(scan, phaser, tmp_path):
    with h5py.File(scan, "r") as f:  # the first frames message of the capture, replayed as recorded
        first_message = next(len(ids) for ids in f["messages/frame_ids"][:] if len(ids))
    assert first_message < FRAMES
    statuses = []
    settings = live_settings(tmp_path, max_series=1)
    pipeline = LivePipeline(settings, phaser=phaser, on_status=statuses.append)
    # 20 frames/s: the first message at once, the next one first_message / 20 s (1.6 s) later;
    # statuses come every 0.2 s, so several see the series open with only the first message in
    detector = Detector(settings.data_endpoint, [capture_series(scan)], rate_fps=20)
    detector.start()
    [result] = run_with_deadline(pipeline, 60)
    detector.join(timeout=20)
    assert [s["state"] for s in statuses][-1] == "stopped" and len(statuses) >= 2
    for status in statuses:
        for section, keys in STATUS_KEYS.items():
            missing = [k for k in keys if k not in status[section]]
            assert not missing, f"{section} lacks {missing}"
            assert all(isinstance(status[section][k], (int, float)) for k in keys)
        assert {"time_unix_s", "uptime_s", "open_series", "series", "errors", "state"} <= set(status)
        assert json.loads(json.dumps(status)) == status  # status.json holds it whole
        line = status_line(status)
        ingest, counts = status["ingest"], status["pipeline"]
        for shown in (f"received {ingest['frames_received']} ", f"rejected {ingest['frames_rejected']} ",
                      f"series open {counts['series_open']} done {counts['series_done']} ",
                      f"phased {counts['particles_phased']} "):
            assert shown in line, (shown, line)
    final = statuses[-1]
    assert json.loads((tmp_path / "out" / "status.json").read_text()) == final
    assert final["ingest"]["frames_received"] == FRAMES
    assert final["ingest"]["frames_dropped_at_source"] == final["ingest"]["frames_missing"] == 0
    assert final["pipeline"]["particles_found"] == result.picks
    assert final["pipeline"]["particles_phased"] == result.phased
    assert final["pipeline"]["particles_flagged"] == sum(result.flagged.values())
    assert final["pipeline"]["series_open"] == 0 and final["pipeline"]["cached_bytes"] == 0
    assert final["series"] == [{"series_id": "scan", "status": "phased", "picks": result.picks,
                                "phased": result.phased, "flagged": sum(result.flagged.values()),
                                "resolution_estimate_A": result.resolution_estimate_A}]
    # the PRTF estimates of the phased particles (no truth needed), as the STAR holds them
    star, _ = read_stack(tmp_path / "out" / "scan")
    estimates = star["particles"]["simedResolutionEstimateA"].astype(float)
    assert result.resolution_estimate_A == {"median": pytest.approx(float(np.median(estimates))),
                                            "min": pytest.approx(float(estimates.min())),
                                            "max": pytest.approx(float(estimates.max()))}
    # while the series was open, its accounting showed the first message's frames, and only those
    partial = [s for s in statuses[:-1] if s["open_series"].get("scan", {}).get("received") == first_message]
    assert partial, [s["open_series"] for s in statuses]
    assert all(s["ingest"]["frames_received"] == first_message and s["pipeline"]["series_open"] == 1
               for s in partial)


def test_unwritable_status_file_does_not_stop_the_pipeline(scan, phaser, tmp_path, caplog):
    out = tmp_path / "out"
    (out / "status.json").mkdir(parents=True)  # a directory in its place: every replace fails
    (out / "status.json" / "keep").write_text("")
    with caplog.at_level(logging.ERROR, logger="simed_stream.live"):
        _pipeline, results, _ = run_live(tmp_path, phaser, [capture_series(scan)])
    [result] = results
    assert result.status == "phased" and star_rows(result.out_dir) == result.phased > 0
    assert any("cannot write" in r.getMessage() and "status.json" in r.getMessage() for r in caplog.records)
    check_capture_complete(captured(out)[0])


def test_a_failing_stack_writer_fails_that_series_only(scan, scan_b, phaser, tmp_path, monkeypatch):
    """Disk full while writing the first series' stack: said so in its result; capture and the next series fine."""
    import errno

    from simed_stream.stack import StackWriter

    original = StackWriter._write_mrcs

    def write_mrcs(self, images, name):
        if self.out_dir.name == "scan":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.out_dir / name))
        return original(self, images, name)

    monkeypatch.setattr(StackWriter, "_write_mrcs", write_mrcs)
    pipeline, results, _ = run_live(tmp_path, phaser, [capture_series(scan), capture_series(scan_b)],
                                    max_series=2)
    first, second = results
    assert first.series_id == "scan" and second.series_id == "scan-b"
    assert first.status != "phased", first  # its particles are not in any stack
    assert "No space left on device" in first.status + " ".join(first.notes) + json.dumps(first.flagged)
    assert first.phased == 0 and sum(first.flagged.values()) == first.picks > 0  # none vanish uncounted
    saved = json.loads((first.out_dir / "result.json").read_text())
    assert saved["status"] == first.status
    assert second.status == "phased" and star_rows(second.out_dir) == second.phased > 0
    for capture in captured(tmp_path / "out"):
        check_capture_complete(capture)
    assert pipeline.errors  # and the operator sees why in status.json
    assert json.loads((tmp_path / "out" / "status.json").read_text())["errors"]


def test_a_failing_result_write_does_not_hang_the_run(scan, scan_b, phaser, tmp_path, monkeypatch):
    """Disk full when the first series' result.json is written: that series fails, the run goes on."""
    import errno

    original = SeriesResult.write
    failures = []

    def write(result):
        if result.out_dir.name == "scan":
            failures.append(result.out_dir)
            raise OSError(errno.ENOSPC, "No space left on device", str(result.out_dir))
        return original(result)

    monkeypatch.setattr(SeriesResult, "write", write)
    _pipeline, results, _ = run_live(tmp_path, phaser, [capture_series(scan), capture_series(scan_b)],
                                    max_series=2)
    assert failures
    first, second = results
    assert first.status.startswith("failed") and "No space left" in first.status
    assert second.status == "phased" and second.phased > 0


def test_positions_beyond_the_live_cache_say_so(scan, phaser, tmp_path):
    """The overview comes after the frames; with no room to keep the sums, the result must say why."""
    _pipeline, results, _ = run_live(tmp_path, phaser, [capture_series(scan)], max_cached_bytes=1)
    [result] = results
    check_capture_complete(captured(tmp_path / "out")[0])  # every frame still captured
    assert result.phased < result.picks
    text = result.status + " ".join(result.notes)
    assert "cache" in text and "reprocess" in text, result
