"""`simed simulate dataset`: layout, reproducibility, resuming and options, on a cheap geometry."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from simed_stream.errors import SimedError
from simulator.dataset import DatasetRequest, simulate_dataset

from conftest import BPTI, UBIQUITIN, small_config

ARRAYS = ("diffraction", "image_hr", "image_lr", "image_lr_clean", "potential", "orientation",
          "protein_id", "dose_e_per_A2", "snr_measured", "defocus_lr_A", "done")


def _run(out, seed=1, orientations=3, config=None, paths=(BPTI,)):
    request = DatasetRequest(list(paths), orientations, seed, out, config or small_config(), progress=False)
    return simulate_dataset(request)


def _contents(path):
    with h5py.File(path) as f:
        return {name: f[name][:] for name in ARRAYS}, dict(f.attrs)


def test_file_is_self_describing(tmp_path):
    path = _run(tmp_path / "a.h5")
    with h5py.File(path) as f:
        assert f["diffraction"].shape[0] == 3 and f["image_hr"].shape == (3, 72, 72)
        assert f["diffraction"].compression == "gzip" and f["diffraction"].chunks[0] == 1
        assert f["done"][:].all()
        for key in ("energy_eV", "box_A", "image_pixel_A", "diffraction_mrad_per_px", "defocus_hr_A", "defocus_lr_A",
                    "cutoff_lr_mrad", "preset", "abtem_version", "seed", "defocus_convention", "config_json"):
            assert key in f.attrs, key
        assert f.attrs["diffraction_mrad_per_px"] == pytest.approx(f.attrs["wavelength_A"] / 50.0 * 1e3)
        assert [n.decode() for n in f["protein_name"][:]] == ["1bpi"]
        q = f["orientation"][:]
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
        side = f["diffraction"].shape[1]
        assert side % 2 == 1  # direct beam in the centre pixel
        assert abs((side // 2) * f.attrs["diffraction_mrad_per_px"] - 20.0) <= f.attrs["diffraction_mrad_per_px"]


def test_same_seed_same_contents_other_seed_differs(tmp_path):
    first, attrs_first = _contents(_run(tmp_path / "a.h5", seed=7))
    second, attrs_second = _contents(_run(tmp_path / "b.h5", seed=7))
    for name in ARRAYS:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert attrs_first.keys() == attrs_second.keys()
    for key in attrs_first:
        np.testing.assert_array_equal(attrs_first[key], attrs_second[key], err_msg=key)
    other, _ = _contents(_run(tmp_path / "c.h5", seed=8))
    assert not np.allclose(first["orientation"], other["orientation"])
    assert not np.array_equal(first["image_lr"], other["image_lr"])


def test_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    reference, _ = _contents(_run(tmp_path / "full.h5", orientations=4))
    path = _run(tmp_path / "cut.h5", orientations=4)
    with h5py.File(path, "r+") as f:  # as if the run had stopped after two samples
        f["done"][2:] = False
        f["image_hr"][2:] = 0
    resumed, _ = _contents(_run(path, orientations=4))
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


def test_rerun_with_other_settings_is_refused_and_keeps_the_file(tmp_path):
    path = _run(tmp_path / "a.h5", seed=1, orientations=2)
    before, _ = _contents(path)
    with pytest.raises(SimedError, match="other settings"):
        _run(path, seed=2, orientations=2)
    after, _ = _contents(path)
    np.testing.assert_array_equal(before["image_hr"], after["image_hr"])


def test_defocus_range_and_diffraction_counting_noise(tmp_path):
    config = small_config(diffraction_dose_e_per_A2=50.0,
                          image_lr={"defocus_A": -1000.0, "defocus_range_A": [-1500.0, -800.0]})
    path = _run(tmp_path / "noisy.h5", orientations=4, config=config)
    with h5py.File(path) as f:
        defocus = f["defocus_lr_A"][:]
        electrons = 50.0 * 50.0**2
        counts = f["diffraction"][:].astype(np.float64) * electrons
        clean_lr = f["image_lr_clean"][:]
    assert np.all((defocus >= -1500) & (defocus <= -800)) and len(np.unique(defocus)) == 4
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3 * counts.max())
    assert (np.round(counts) == 0).mean() > 0.3  # sparse, as counted diffraction is
    assert not np.allclose(clean_lr[0], clean_lr[1])


def test_cli_with_two_worker_processes_matches_in_process_run(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("box_A: 50\ngpts: 144\nimage_field_A: 50\nimage_size_px: 72\n")
    out = tmp_path / "cli.h5"
    command = [sys.executable, "-m", "simed_stream.cli", "-q", "simulate", "dataset", "--config", str(config),
               "--pdb", str(BPTI), "--pdb", str(UBIQUITIN), "--orientations", "2", "--seed", "4",
               "--out", str(out), "--workers", "2", "--preview", str(tmp_path / "p.png")]
    # ubiquitin does not fit this 50 Å box: the whole run is refused before anything is written
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "does not fit the 50 Å box" in result.stderr and not out.exists()
    command[command.index(str(UBIQUITIN)) - 1 : command.index(str(UBIQUITIN)) + 1] = []
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p.png").stat().st_size > 1000
    in_process, _ = _contents(_run(tmp_path / "ref.h5", seed=4, orientations=2))
    from_cli, _ = _contents(out)
    for name in ARRAYS:
        np.testing.assert_array_equal(from_cli[name], in_process[name], err_msg=name)


def test_two_processes_with_the_same_seed_write_identical_files(tmp_path):
    """The real command twice, each in a fresh interpreter: every array and attribute bit for bit.

    The second run has two workers, and its abTEM is configured (through ABTEM_CONFIG, as a user
    may) to plan FFTs with FFTW_ESTIMATE, so its planner would choose other algorithms than the
    first run's measurement did -- as a process measuring under other load may. Both runs must
    take the machine's shared plans (`simulator.fft_plans`) instead.
    """
    abtem_config = tmp_path / "abtem-config"
    abtem_config.mkdir()
    (abtem_config / "abtem.yaml").write_text("fftw:\n  planning_effort: FFTW_ESTIMATE\n")
    files = []
    for workers, env in ((1, {}), (2, {"ABTEM_CONFIG": str(abtem_config)})):
        out = tmp_path / f"workers{workers}.h5"
        command = [sys.executable, "-m", "simed_stream.cli", "-q", "simulate", "dataset", "--preset", "cpu",
                   "--pdb", str(BPTI), "--orientations", "2", "--seed", "5", "--out", str(out),
                   "--workers", str(workers)]
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ | env)
        assert result.returncode == 0, result.stderr
        files.append(out)
    with h5py.File(files[0]) as first, h5py.File(files[1]) as second:
        assert sorted(first) == sorted(second) and "diffraction" in first
        for name in first:
            assert np.array_equal(first[name][()], second[name][()]), name
        assert first.attrs.keys() == second.attrs.keys()
        for key in first.attrs:
            np.testing.assert_array_equal(first.attrs[key], second.attrs[key], err_msg=key)
        assert first["image_lr"][0].std() > 0.1 * first["image_lr_clean"][0].std()  # noise is in the comparison


def test_fft_plans_are_measured_once_and_an_unusable_plan_file_is_replaced(tmp_path, monkeypatch):
    from simulator import fft_plans
    from simulator.physics import configure_abtem

    configure_abtem()
    config = small_config()
    path = fft_plans.use_shared_plans(config, tmp_path)
    assert path == fft_plans.plan_file(config, tmp_path) and path.parent == tmp_path
    kept = json.loads(path.read_text())
    assert kept["identity"]["gpts"] == 144 and "fftwf_wisdom" in kept["wisdom"][1]
    measure = fft_plans._measure
    monkeypatch.setattr(fft_plans, "_measure", lambda config: pytest.fail("measured although the plans were kept"))
    assert fft_plans.use_shared_plans(config, tmp_path) == path
    path.write_text("{truncated")
    monkeypatch.setattr(fft_plans, "_measure", measure)
    fft_plans.use_shared_plans(config, tmp_path)
    assert json.loads(path.read_text())["identity"] == kept["identity"]
