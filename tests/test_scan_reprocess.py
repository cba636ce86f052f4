"""`simed simulate scan` and `simed reprocess`: the synthetic scan capture, scan matching and
particle preparation, the offline chain end to end, and its refusals of bad inputs.

The phaser is an untrained tiny U-Net with a hand-written model card: these tests check the
mechanics (files, flags, accounting, calibration), not phasing quality. Expected numbers are
computed here independently (by hand in numpy, or from the dataset the scan was built from)."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time

import h5py
import hdf5plugin  # noqa: F401  (decodes the capture's Blosc-compressed frames and sums)
import mrcfile
import numpy as np
import pytest
import starfile
import torch

from simed_stream.cli import main
from simed_stream.errors import SimedError
from simed_stream.codec import compress_frame
from simed_stream.particles import (ScanCalibration, fill_particle, match_particles, match_to_scan, pattern_side_px)
from simed_stream.records import PositionSum
from simed_stream.phasing.classical import Geometry
from simulator.scan import ScanSettings

from conftest import write_tiny_phaser

SCAN = ScanSettings(scan_shape=(5, 5), particles=4, frames_per_position=2, seed=1)
# the cpu preset, by hand: 140 Å box, 128 px of 0.546875 Å, 200 kV, 20 mrad
CPU_GEOMETRY = Geometry(box_A=140.0, image_pixel_A=70.0 / 128, image_size_px=128, wavelength_A=0.025079340450548007,
                        defocus_lr_A=-1000.0, cutoff_lr_mrad=5.0, max_angle_mrad=20.0)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def scan_capture(scan):
    """The shared 5×5 scan (conftest), built with SCAN's settings; tests only read it or copy it."""
    return scan


@pytest.fixture(scope="module")
def reprocessed(tmp_path_factory, scan_capture, tiny_phaser):
    """`simed reprocess` of the scan: (exit code, output folder, capture sha256 before, seconds it took)."""
    before = sha256(scan_capture)
    out = tmp_path_factory.mktemp("reprocess") / "out"
    started = time.perf_counter()
    code = main(["reprocess", str(scan_capture), "--out", str(out), "--model", str(tiny_phaser)])
    return code, out / scan_capture.stem, before, time.perf_counter() - started


def _masked_by_hand(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each masked pixel → the mean of its unmasked 8-neighbours (plain loops, no library)."""
    out = frame.astype(np.float64).copy()
    h, w = frame.shape
    for r, c in np.argwhere(mask):
        values = [frame[rr, cc] for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                  if (rr, cc) != (r, c) and 0 <= rr < h and 0 <= cc < w and not mask[rr, cc]]
        out[r, c] = np.mean(values) if values else 0.0
    return out


def _expected_beam(y: int, x: int) -> tuple[int, int]:
    """Where the descan drift puts the direct beam at scan position (y, x) (whole pixels)."""
    (h, w), (ny, nx), (dy, dx) = SCAN.sig_shape, SCAN.scan_shape, SCAN.drift_px
    return h // 2 + int(round(dy * y / (ny - 1))), w // 2 + int(round(dx * x / (nx - 1)))


# ---------------------------------------------------------------- the simulated scan capture

def test_scan_capture_accounts_for_every_frame(scan_capture):
    ny, nx = SCAN.scan_shape
    expected = ny * nx * SCAN.frames_per_position
    with h5py.File(scan_capture, "r") as f:
        accounting = json.loads(f.attrs["accounting"])
        assert f.attrs["state"] == "closed" and f.attrs["end_status"] == "complete"
        assert accounting["frames_expected"] == accounting["received"] == expected
        assert accounting["missing"] == accounting["rejected"] == accounting["dropped_at_source"] == 0
        assert accounting["positions_valid"] == accounting["positions_total"] == ny * nx
        assert (f["frame_status"][:] == 1).all()
        assert (f["positions/frame_count"][:] == SCAN.frames_per_position).all()
        assert f["positions/valid"][:].all()
        assert f["frames"].shape == (expected, *SCAN.sig_shape) and f["frames"].dtype == np.float32
        # every position got its frames_per_position frames, in raster order
        scan_yx = f["scan_yx"][:]
        counts = np.zeros((ny, nx), int)
        np.add.at(counts, (scan_yx[:, 0], scan_yx[:, 1]), 1)
        assert (counts == SCAN.frames_per_position).all()


def test_scan_truth_places_particles_apart_and_matches_the_dataset(scan_capture, physics_dataset):
    with h5py.File(scan_capture, "r") as f, h5py.File(physics_dataset, "r") as d:
        g = f["truth"]
        scan_yx = g["scan_yx"][:]
        index = g["dataset_index"][:]
        assert len(scan_yx) == SCAN.particles == len(set(map(tuple, scan_yx.tolist())))
        assert ((scan_yx >= 0) & (scan_yx < SCAN.scan_shape)).all()
        for i in range(len(scan_yx)):
            for j in range(i + 1, len(scan_yx)):
                assert np.abs(scan_yx[i] - scan_yx[j]).max() >= 2, "neighbouring particles share a beam"
        names = [n.decode() for n in d["protein_name"][:]]
        assert [p.decode() if isinstance(p, bytes) else p for p in g["protein"][:]] == \
            [names[k] for k in d["protein_id"][:][index]]
        np.testing.assert_array_equal(g["orientation"][:], d["orientation"][:][index])
        np.testing.assert_array_equal(g["potential"][:], d["potential"][:][index])
        assert g.attrs["fingerprint"] == d.attrs["fingerprint"]


def test_scan_affine_maps_truth_positions_to_the_particles(scan_capture):
    with h5py.File(scan_capture, "r") as f:
        header = json.loads(f["overviews/0"].attrs["header"])
        affine = np.array(header["affine_scan_to_overview"])
        scan_yx = f["truth/scan_yx"][:].astype(float)
        yx = f["truth/yx_overview_px"][:]
        size = int(f["truth"].attrs["image_size_px"])
        overview_shape = f["overviews/0"].shape
    assert header["pixel_size_A"] == pytest.approx(70.0 / 128)
    mapped = scan_yx @ affine[:, :2].T + affine[:, 2]
    jitter = SCAN.jitter_fraction * size + 0.5  # jitter is rounded to whole pixels
    assert (np.abs(mapped - yx) <= jitter).all()
    # and every particle's full image field lies inside the overview
    assert (yx - size // 2 >= 0).all() and (yx + size // 2 <= np.array(overview_shape)).all()


def test_particle_positions_hold_the_datasets_diffraction(scan_capture, physics_dataset):
    ny, nx = SCAN.scan_shape
    side = 2 * math.ceil(20.0 / (1e3 * 0.025079340450548007 / 140.0) - 1e-9) + 1  # 225 for the cpu preset
    half = side // 2
    with h5py.File(scan_capture, "r") as f, h5py.File(physics_dataset, "r") as d:
        mask = f["pixel_mask"][:].astype(bool)
        assert 0 < mask.sum() <= SCAN.hot_pixels  # two hot pixels may coincide
        sums = f["positions/sum"][:]
        centres = f["positions/beam_centre_yx"][:]
        truth = {tuple(p): int(i) for p, i in zip(f["truth/scan_yx"][:].tolist(), f["truth/dataset_index"][:])}
        assert d["diffraction"].shape[1:] == (side, side)
        for y in range(ny):
            for x in range(nx):
                flat = y * nx + x
                beam = _expected_beam(y, x)
                assert np.allclose(centres[flat], beam, atol=0.01), (y, x, centres[flat], beam)
                frame = sums[flat].astype(np.float64)
                clean = frame.copy()
                clean[mask] = 0  # hot pixels ignored
                brightest = np.unravel_index(np.argmax(clean), clean.shape)
                assert brightest == beam
                scattered = clean.sum() - clean[beam]
                if (y, x) not in truth:
                    # the bare direct beam: every unmasked electron in one pixel
                    assert clean[beam] / clean.sum() >= 0.999 and scattered == 0
                    continue
                reference = d["diffraction"][truth[(y, x)]].astype(np.float64)
                reference /= reference.sum()
                # scattered fraction as the dataset says (Poisson noise on ~4e7 electrons is tiny)
                assert scattered / clean.sum() == pytest.approx(1 - reference[half, half], rel=0.02)
                cy, cx = (int(round(c)) for c in centres[flat])
                cut = _masked_by_hand(frame, mask)[cy - half : cy + half + 1, cx - half : cx + half + 1]
                cut /= cut.sum()
                off_beam = np.ones((side, side), bool)
                off_beam[half, half] = False  # the direct beam alone would make any pair correlate
                r = np.corrcoef(np.sqrt(cut[off_beam]), np.sqrt(reference[off_beam]))[0, 1]
                assert r > 0.99, (y, x, r)
                # one pixel off would be a different pattern: the test sees centring errors
                shifted = _masked_by_hand(frame, mask)[cy - half + 1 : cy + half + 2, cx - half : cx + half + 1]
                shifted /= shifted.sum()
                assert np.corrcoef(np.sqrt(shifted[off_beam]), np.sqrt(reference[off_beam]))[0, 1] < r


def test_scan_capture_replays_through_the_fake_detector(scan_capture):
    from simed_stream.capture_replay import capture_series

    with h5py.File(scan_capture, "r") as f:
        headers = [json.loads(h) for h in f["messages/header"][:]]
        frames = f["frames"][:]
    source = capture_series(scan_capture)
    messages = list(source.messages)
    frame_messages = [payload for htype, _, payload in messages if htype == "frames"]
    assert len(frame_messages) == sum(h["htype"] == "frames" for h in headers) > 0
    assert [htype for htype, _, _ in messages] == [h["htype"] for h in headers]
    ids = np.concatenate([payload[0] for payload in frame_messages]).astype(np.int64)
    assert sorted(ids.tolist()) == list(range(len(frames)))
    for ids_, _, _, pixels in frame_messages:
        np.testing.assert_array_equal(pixels, frames[ids_.astype(np.int64)])
    assert source.pixel_mask is not None and source.pixel_mask.sum() > 0


# ---------------------------------------------------------------- calibration and scan matching

def test_overview_to_scan_inverts_a_rotated_scaled_affine():
    theta, scale, offset = np.deg2rad(30.0), 96.0, np.array([50.0, -20.0])
    c, s = np.cos(theta), np.sin(theta)
    affine = np.array([[scale * c, -scale * s, offset[0]], [scale * s, scale * c, offset[1]]])
    calibration = ScanCalibration((8, 6), 1, (256, 256), 0.18, 200e3, 0.55, affine)
    scan = np.array([[0.0, 0.0], [3.0, 2.0], [7.0, 5.0], [1.5, 4.25]])
    overview = np.column_stack([scale * (c * scan[:, 0] - s * scan[:, 1]) + offset[0],
                                scale * (s * scan[:, 0] + c * scan[:, 1]) + offset[1]])
    np.testing.assert_allclose(calibration.overview_to_scan(overview), scan, atol=1e-9)
    # any overview point: the hand-solved inverse, R(θ)ᵀ (p − t) / s
    points = np.array([[10.0, 300.0], [-40.0, 12.5], [700.0, 0.0]])
    d = points - offset
    by_hand = np.column_stack([(c * d[:, 0] + s * d[:, 1]) / scale, (-s * d[:, 0] + c * d[:, 1]) / scale])
    np.testing.assert_allclose(calibration.overview_to_scan(points), by_hand, atol=1e-9)
    np.testing.assert_allclose(calibration.overview_to_scan(points[0]), by_hand[:1], atol=1e-9)


def test_match_to_scan_flags_picks_outside_the_scan():
    affine = np.array([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    calibration = ScanCalibration((5, 5), 2, (256, 256), 0.18, 200e3, 0.55, affine)
    picks = np.array([[-40.0, 0.0],    # scan y -0.4 → row 0: inside
                      [-60.0, 0.0],    # -0.6 → row -1: outside
                      [449.0, 449.0],  # (4.49, 4.49) → (4, 4): inside
                      [451.0, 0.0],    # 4.51 → row 5: outside
                      [200.0, 551.0],  # column 5.51 → 6: outside
                      [200.0, 300.0]])  # (2, 3): inside
    scan, inside = match_to_scan(picks, calibration)
    assert inside.tolist() == [True, False, True, False, False, True]
    assert scan[[0, 2, 5]].tolist() == [[0, 0], [4, 4], [2, 3]]


def _scan_calibration(path) -> ScanCalibration:
    with h5py.File(path, "r") as f:
        return ScanCalibration.from_headers(json.loads(f.attrs["series_start"]),
                                            json.loads(f["overviews/0"].attrs["header"]))


def test_check_model_names_what_differs(scan_capture, dataset_geometry):
    calibration = _scan_calibration(scan_capture)
    assert calibration.nav_shape == SCAN.scan_shape and calibration.frames_per_position == 2
    calibration.check_model(dataset_geometry)  # the dataset's own geometry: accepted
    calibration.check_model(CPU_GEOMETRY)  # and the preset written by hand
    cases = [(dataclasses.replace(dataset_geometry, box_A=150.0), calibration, "mrad/px"),
             (dataclasses.replace(dataset_geometry, image_pixel_A=0.6), calibration, "overview pixel"),
             (dataset_geometry, dataclasses.replace(calibration, energy_eV=300e3), "beam energy 300 keV")]
    for geometry, cal, what in cases:
        with pytest.raises(SimedError, match="calibration does not match") as error:
            cal.check_model(geometry)
        message = str(error.value)
        assert what in message
        for _, _, other in cases:  # only what differs is named
            assert other == what or other not in message, message


def test_calibration_needs_the_optics():
    with pytest.raises(SimedError, match="mrad_per_px"):
        ScanCalibration.from_headers({"scan": {"nav_shape": [2, 2], "frames_per_position": 1},
                                      "detector": {"sig_shape": [8, 8]}, "optics": {"energy_eV": 2e5}},
                                     {"pixel_size_A": 1.0, "affine_scan_to_overview": [[1, 0, 0], [0, 1, 0]]})


# ---------------------------------------------------------------- preparing particles

def test_preparing_particles_flags_each_problem_and_cuts_the_good_one():
    geometry = CPU_GEOMETRY
    mrad_per_px = 1e3 * geometry.wavelength_A / geometry.box_A
    side = 2 * math.ceil(geometry.max_angle_mrad / mrad_per_px) + 1
    assert side == 225 == pattern_side_px(geometry, mrad_per_px)
    step, offset = 128.0, 40.0
    affine = np.array([[step, 0.0, offset], [0.0, step, offset]])
    calibration = ScanCalibration((5, 5), 2, (256, 256), mrad_per_px, 200e3, geometry.image_pixel_A, affine)
    rng = np.random.default_rng(7)
    overview = rng.normal(1.0, 0.05, (720, 720))

    def at(y, x, dy=0.0, dx=0.0):
        return (offset + step * y + dy, offset + step * x + dx)

    picks = np.array([at(1, 1, 3, -2),     # 0: half its frames
                      at(1, 3),            # 1: no beam centre
                      (30.0, at(0, 2)[1]),  # 2: scan row 0, but 30 px from the overview's top
                      at(5.2, 2),          # 3: below the scan
                      at(3, 2, 3.4, -5.2),  # 4: good
                      at(4, 4)])           # 5: beam so near the detector's edge the pattern is cut
    # the good position: a pattern around the beam at (130, 129), a hot pixel, junk outside the cut
    frame = np.zeros((256, 256), np.float32)  # as the receiver sums float frames
    frame[130 - 112 : 130 + 113, 129 - 112 : 129 + 113] = rng.uniform(1, 100, (225, 225))
    frame[130, 129] = 1e7
    frame[0, 0] = frame[255, 255] = 1e6  # outside the 225² cut
    bad = np.zeros((256, 256), bool)
    bad[131, 140] = True
    frame[131, 140] = 2**20
    chunk = compress_frame(frame)

    def position(flat, counted, centre, valid):
        return PositionSum("s", flat, counted, centre, valid, chunk, frame.dtype, frame.shape)

    table = {1 * 5 + 1: position(6, 1, (130.0, 129.0), False), 1 * 5 + 3: position(8, 2, (np.nan, np.nan), False),
             0 * 5 + 2: position(2, 2, (130.0, 129.0), True), 3 * 5 + 2: position(17, 2, (130.3, 128.6), True),
             4 * 5 + 4: position(24, 2, (10.0, 128.0), True)}

    def prepare(picks, scores, min_coverage=1.0):
        particles = match_particles(picks, scores, calibration)
        for p in particles:
            if p.flag is None:
                fill_particle(p, table[p.scan_yx[0] * 5 + p.scan_yx[1]], overview, calibration, geometry, bad,
                              min_coverage)
        return particles

    particles = prepare(picks, np.arange(6.0))
    matched = sorted(p.scan_yx[0] * 5 + p.scan_yx[1] for p in particles if p.scan_yx is not None)
    assert matched == sorted(table)  # every pick inside the scan, and only those
    flags = [p.flag for p in particles]
    assert flags[0].startswith("missing frames") and "0.50" in flags[0]
    assert "no direct beam" in flags[1]
    assert "overview's edge" in flags[2]
    assert flags[3] == "outside the scan" and particles[3].scan_yx is None
    assert flags[4] is None
    assert "detector edge" in flags[5]
    good = particles[4]
    assert good.scan_yx == (3, 2) and good.coverage == 1.0 and good.beam_centre_yx == (130.3, 128.6)
    expected = _masked_by_hand(frame, bad)[130 - 112 : 130 + 113, 129 - 112 : 129 + 113]
    expected /= expected.sum()
    assert good.diffraction.shape == (225, 225) and good.diffraction.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(good.diffraction, expected, rtol=1e-6)
    assert np.unravel_index(good.diffraction.argmax(), (225, 225)) == (112, 112)
    r0, c0 = round(picks[4][0]) - 64, round(picks[4][1]) - 64
    np.testing.assert_array_equal(good.image_lr, overview[r0 : r0 + 128, c0 : c0 + 128])
    # a lower coverage requirement lets the half-covered particle through to the next check
    again = prepare(picks[:1], np.zeros(1), min_coverage=0.5)
    assert again[0].flag is None and again[0].coverage == 0.5


# ---------------------------------------------------------------- reprocess end to end

def test_reprocess_writes_a_relion_stack(reprocessed, scan_capture, tiny_phaser):
    code, out, before, _ = reprocessed
    assert code == 0
    assert sha256(scan_capture) == before, "reprocess changed the capture"
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "phased" and result["phased"] > 0
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert {"optics", "particles"} <= set(blocks)
    optics, particles = blocks["optics"], blocks["particles"]
    assert float(optics["rlnImagePixelSize"].iloc[0]) == 0.546875 and int(optics["rlnImageSize"].iloc[0]) == 128
    assert len(particles) == result["phased"]
    stacks = {}
    for name in particles["rlnImageName"]:
        number, stack = str(name).split("@")
        if stack not in stacks:
            path = out / stack
            assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))
            with mrcfile.open(path, permissive=False) as mrc:
                assert float(mrc.voxel_size.x) == float(mrc.voxel_size.y) == 0.546875
                stacks[stack] = np.array(mrc.data)
        data = stacks[stack]
        assert data.dtype == np.float32 and data.shape[1:] == (128, 128)
        image = data[int(number) - 1]  # RELION counts from 1
        assert image.shape == (128, 128) and np.isfinite(image).all()
    assert sum(len(d) for d in stacks.values()) == len(particles)
    # scan positions and model in the STAR: by hand from the capture's affine and the model file
    with h5py.File(scan_capture, "r") as f:
        affine = np.array(json.loads(f["overviews/0"].attrs["header"])["affine_scan_to_overview"])
    yx = particles[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy(float)
    scan = np.rint((yx - affine[:, 2]) / np.diag(affine[:, :2])).astype(int)
    assert scan[:, 0].tolist() == particles["simedScanY"].astype(int).tolist()
    assert scan[:, 1].tolist() == particles["simedScanX"].astype(int).tolist()
    from simed_stream.phasing.inference import Phaser

    assert set(particles["simedModelSha256"].astype(str)) == {Phaser(tiny_phaser, "cpu").sha256}
    # what needs no ground truth, per particle: free R of the search, the PRTF resolution estimate
    # (between the data limit, 20 mrad ≈ 1.25 Å, and the box) and the spread of its solutions
    assert (particles["simedRFree"].astype(float) > 0).all()
    assert particles["simedResolutionEstimateA"].astype(float).between(1.2, 70.0).all()
    assert (particles["simedUncertainty"].astype(float) >= 0).all()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reprocess_reports_every_pick_and_its_timing(reprocessed, scan_capture):
    _, out, _, wall_s = reprocessed
    result = json.loads((out / "result.json").read_text())
    picks = json.loads((out / "picks.json").read_text())
    assert len(picks) == result["picks"] > 0
    for pick in picks:  # each is either phased (with its Fourier R) or flagged with the reason
        assert (pick["flag"] is None) != (pick["fourier_r"] is None), pick
        if pick["flag"] is None:
            assert 0 <= pick["fourier_r"] and pick["coverage"] == 1.0
    assert sum(p["flag"] is None for p in picks) == result["phased"]
    assert sum(result["flagged"].values()) == result["picks"] - result["phased"]
    # picking against the capture's truth, by hand: the particles are two scan steps (140 Å)
    # apart, so the nearest pick within half a diameter (20 Å) is the one-to-one match
    with h5py.File(scan_capture, "r") as f:
        truth_yx = f["truth/yx_overview_px"][:]
    picks_yx = np.array([[p["y_px"], p["x_px"]] for p in picks])
    radius_px = 20.0 / (70.0 / 128)
    distance = np.hypot(*(truth_yx[:, None, :] - picks_yx[None, :, :]).transpose(2, 0, 1))
    matched_pick = [int(row.argmin()) for row in distance if row.min() <= radius_px]
    assert len(set(matched_pick)) == len(matched_pick)
    precision, recall = len(matched_pick) / len(picks), len(matched_pick) / len(truth_yx)
    score = result["pick_score"]
    assert (score["true_positives"], score["false_positives"], score["false_negatives"]) == (
        len(matched_pick), len(picks) - len(matched_pick), len(truth_yx) - len(matched_pick))
    assert score["precision"] == pytest.approx(precision) and score["recall"] == pytest.approx(recall)
    assert score["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    # every stage did work, and the stages are parts of the command's own wall time
    stages = ("pick", "prepare", "engine", "network", "write", "report")
    assert all(result["seconds"][stage] > 0 for stage in stages), result["seconds"]
    assert sum(result["seconds"][stage] for stage in stages) < wall_s


def test_picks_json_gives_each_pick_its_own_numbers(reprocessed):
    """picks.json and particles.star must agree on which pick got which Fourier R-factor, free R
    and resolution estimate."""
    _, out, _, wall_s = reprocessed
    picks = json.loads((out / "picks.json").read_text())
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    for pick_key, column in (("fourier_r", "simedFourierR"), ("r_free", "simedRFree"),
                             ("resolution_estimate_A", "simedResolutionEstimateA")):
        star = {(round(float(y), 2), round(float(x), 2)): float(r) for y, x, r in
                zip(particles["rlnCoordinateY"], particles["rlnCoordinateX"], particles[column])}
        phased = {(p["y_px"], p["x_px"]): p[pick_key] for p in picks if p["flag"] is None}
        assert set(phased) == set(star)
        for key, r in phased.items():
            assert r == pytest.approx(star[key], rel=1e-6), f"{pick_key} at {key}: picks.json {r}, STAR {star[key]}"


# ---------------------------------------------------------------- bad inputs

def _copy(scan_capture, path):
    shutil.copy(scan_capture, path)
    return path


def _reprocess(captures, out, model, *extra) -> int:
    return main(["-q", "reprocess", *map(str, captures), "--out", str(out), "--model", str(model), *extra])


def test_capture_without_overview_keeps_its_frames(tmp_path, scan_capture, tiny_phaser):
    capture = _copy(scan_capture, tmp_path / "no-overview.h5")
    with h5py.File(capture, "a") as f:
        del f["overviews"]
    before = sha256(capture)
    assert _reprocess([capture], tmp_path / "out", tiny_phaser) == 1
    assert sha256(capture) == before
    result = json.loads((tmp_path / "out" / "no-overview" / "result.json").read_text())
    assert result["status"] == "not phased: no overview"
    frames = SCAN.scan_shape[0] * SCAN.scan_shape[1] * SCAN.frames_per_position
    assert any(f"{frames} captured frames kept" in note for note in result["notes"]), result["notes"]


def test_overview_that_misses_the_scan_is_refused(tmp_path, scan_capture, tiny_phaser):
    capture = _copy(scan_capture, tmp_path / "mismatch.h5")
    with h5py.File(capture, "a") as f:
        dataset = f["overviews/0"]
        header = json.loads(dataset.attrs["header"])
        header["affine_scan_to_overview"] = [[128.0, 0.0, 5000.0], [0.0, 128.0, 5000.0]]  # far off a 768² image
        dataset.attrs["header"] = json.dumps(header)
    before = sha256(capture)
    assert _reprocess([capture], tmp_path / "out", tiny_phaser) == 1
    assert sha256(capture) == before
    status = json.loads((tmp_path / "out" / "mismatch" / "result.json").read_text())["status"]
    assert status.startswith("failed") and "overview/scan mismatch" in status


def test_model_for_another_box_is_refused(tmp_path, scan_capture, tiny_phaser, dataset_geometry):
    geometry = dict(dataset_geometry.__dict__, box_A=dataset_geometry.box_A + 20.0)
    model = write_tiny_phaser(tmp_path / "other-box", geometry, network=False)
    capture = _copy(scan_capture, tmp_path / "scan.h5")
    before = sha256(capture)
    assert _reprocess([capture], tmp_path / "out", model) == 1
    assert sha256(capture) == before
    status = json.loads((tmp_path / "out" / "scan" / "result.json").read_text())["status"]
    assert status.startswith("failed") and "calibration does not match" in status and "mrad/px" in status
    assert not (tmp_path / "out" / "scan" / "particles.star").exists()


def test_unwritable_output_fails_before_any_work(tmp_path, scan_capture, tiny_phaser, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = sha256(scan_capture)
    assert _reprocess([scan_capture], blocker / "out", tiny_phaser) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
    assert sha256(scan_capture) == before and blocker.read_text() == "not a folder"


def test_truncated_capture_is_reported(tmp_path, scan_capture, tiny_phaser):
    capture = _copy(scan_capture, tmp_path / "cut.h5")
    os.truncate(capture, capture.stat().st_size // 2)
    before = sha256(capture)
    assert _reprocess([capture], tmp_path / "out", tiny_phaser) == 1
    assert sha256(capture) == before
    status = json.loads((tmp_path / "out" / "cut" / "result.json").read_text())["status"]
    assert status.startswith("failed") and "truncated" in status


def test_missing_capture_fails_its_own_series_only(tmp_path, scan_capture, tiny_phaser):
    missing = tmp_path / "never-recorded.h5"
    assert _reprocess([missing], tmp_path / "out", tiny_phaser) == 1
    status = json.loads((tmp_path / "out" / "never-recorded" / "result.json").read_text())["status"]
    assert status.startswith("failed") and "does not exist" in status
    assert not missing.exists()


def test_captures_with_the_same_name_are_refused(tmp_path, scan_capture, tiny_phaser, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _copy(scan_capture, tmp_path / "a" / "scan.h5")
    second = _copy(scan_capture, tmp_path / "b" / "scan.h5")
    assert _reprocess([first, second], tmp_path / "out", tiny_phaser) == 2
    assert "share a file name" in capsys.readouterr().err
    assert not (tmp_path / "out" / "scan").exists()  # refused before any capture was processed
    assert sha256(first) == sha256(second) == sha256(scan_capture)


# ---------------------------------------------------------------- `simed simulate scan` refusals

def test_simulate_scan_never_overwrites(tmp_path, physics_dataset, capsys):
    out = tmp_path / "taken.h5"
    out.write_bytes(b"an earlier capture")
    code = main(["simulate", "scan", "--dataset", str(physics_dataset), "--scan-shape", "5x5", "--particles", "2",
                 "--out", str(out)])
    assert code == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier capture"


def test_simulate_scan_refuses_more_particles_than_fit(tmp_path, physics_dataset, capsys):
    out = tmp_path / "crowded.h5"
    room = 3 * 3  # a 5x5 scan: particles on every other row and column at most
    code = main(["simulate", "scan", "--dataset", str(physics_dataset), "--scan-shape", "5x5",
                 "--particles", str(room + 1), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and f"at most {room}" in err
    assert not out.exists()
    with pytest.raises(SimedError, match="at most 4"):
        ScanSettings(scan_shape=(4, 3), particles=5)


def test_dask_local_cluster_gives_the_serial_stack(tmp_path, scan_capture, tiny_phaser):
    """Two captures on a local Dask cluster of 2 workers = the same two, one after the other, here."""
    from simed_stream.chain_settings import ChainSettings
    from simed_stream.reprocess import reprocess_captures
    from simed_stream.stack import read_stack

    second = tmp_path / "scan-b.h5"
    shutil.copy(scan_capture, second)
    captures = [scan_capture, second]
    settings = ChainSettings(model=tiny_phaser, device="cpu")
    serial = reprocess_captures(captures, tmp_path / "serial", settings, None)
    parallel = reprocess_captures(captures, tmp_path / "dask", settings, "local", workers=2)
    assert [r.status for r in parallel] == ["phased", "phased"]
    for a, b in zip(serial, parallel):
        assert (a.picks, a.phased, a.flagged) == (b.picks, b.phased, b.flagged)
        star_a, images_a = read_stack(a.out_dir)
        star_b, images_b = read_stack(b.out_dir)
        assert len(images_a) == a.phased > 0
        np.testing.assert_array_equal(images_a, images_b)
        for column in ("rlnImageName", "rlnCoordinateX", "rlnCoordinateY", "simedFourierR"):
            assert list(star_a["particles"][column]) == list(star_b["particles"][column])


def test_bad_particles_are_flagged_and_the_series_goes_on(physics_dataset, tiny_phaser, tmp_path):
    """A particle the phaser cannot phase (here: a pattern with NaNs) is flagged with the reason on
    that particle; its neighbours in the batch are phased and written."""
    from simed_stream.chain import SeriesChain, SeriesResult
    from simed_stream.phasing.inference import Phaser
    from simed_stream.records import Particle
    from simed_stream.stack import Optics, StackWriter, read_stack

    with h5py.File(physics_dataset, "r") as f:
        diffraction = f["diffraction"][:2].astype(np.float64)
        image_lr = f["image_lr"][:2].astype(np.float64)
    diffraction[1, 3, 3] = np.nan
    chain = SeriesChain.__new__(SeriesChain)  # only the phasing stage: no overview needed
    chain.phaser = Phaser(tiny_phaser, "cpu")
    chain.result = SeriesResult("s", tmp_path, "phased", seconds={"engine": 0.0, "network": 0.0, "write": 0.0})
    chain.phased = []
    chain.writer = StackWriter(tmp_path, Optics(0.546875, 128, 200.0))
    batch = [Particle(i, (64.0, 64.0), 1.0, (0, i), 1.0, diffraction=diffraction[i], image_lr=image_lr[i]) for i in range(2)]
    chain.phase(batch)
    chain.writer.close()
    assert batch[0].flag is None and batch[1].flag.startswith("not phased: diffraction has non-finite values")
    assert chain.result.phased == 1 and len(chain.phased) == 1 and chain.phased[0].particle is batch[0]
    star, images = read_stack(tmp_path)
    assert len(images) == 1


def test_singular_affine_is_refused_by_name():
    header = {"scan": {"nav_shape": [5, 5], "frames_per_position": 2}, "detector": {"sig_shape": [256, 256]},
              "optics": {"mrad_per_px": 0.179, "energy_eV": 200e3}}
    with pytest.raises(SimedError, match="not an invertible"):
        ScanCalibration.from_headers(header, {"pixel_size_A": 0.55, "affine_scan_to_overview": [[0, 0, 100], [0, 0, 100]]})


def test_a_model_file_that_is_not_its_cards_is_refused(tmp_path, tiny_phaser):
    from simed_stream.phasing.inference import Phaser

    folder = tmp_path / "swapped"
    shutil.copytree(tiny_phaser, folder)
    torch.save({k: v + 1 for k, v in torch.load(folder / "model.pt", weights_only=True).items()}, folder / "model.pt")
    with pytest.raises(SimedError, match="not the file its card describes"):
        Phaser(folder, "cpu")
