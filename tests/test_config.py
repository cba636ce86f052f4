import pytest

from simed_stream.errors import ConfigError
from simulator.config import load_simulation_config


def test_presets_have_the_documented_geometry():
    paper = load_simulation_config("paper")
    assert paper.box_A == 70 and paper.gpts == 256
    assert paper.image_pixel_A == pytest.approx(0.2734, abs=1e-4)
    assert paper.diffraction_mrad_per_px == pytest.approx(0.358, abs=1e-3)
    cpu = load_simulation_config("cpu")
    assert cpu.box_A == 140 and cpu.image_size_px == 128
    assert cpu.image_pixel_A == pytest.approx(0.547, abs=1e-3)
    assert cpu.diffraction_mrad_per_px == pytest.approx(0.179, abs=1e-3)
    assert cpu.image_crop_px == 192  # the central 70 Å of a 384-point grid


def test_yaml_overrides_preset(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("preset: paper\nimage_lr:\n  defocus_A: -1500\n  defocus_range_A: [-1500, -1000]\n")
    config = load_simulation_config(None, str(path))
    assert config.preset == "paper" and config.box_A == 70
    assert config.image_lr.defocus_range_A == (-1500, -1000)
    assert config.image_lr.cutoff_mrad == 5  # untouched keys keep the preset's value


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("image_lr:\n  defocus_nm: 100\n")
    with pytest.raises(ConfigError) as error:
        load_simulation_config("cpu", str(path))
    message = str(error.value)
    assert "image_lr.defocus_nm" in message and "defocus_A" in message and "cutoff_mrad" in message


def test_wrong_type_or_unit_names_the_key(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("box_A: 70 Å\n")
    with pytest.raises(ConfigError, match=r"box_A.*valid number.*Å"):
        load_simulation_config("paper", str(path))


def test_too_coarse_grid_is_rejected_with_the_grid_needed():
    with pytest.raises(ConfigError, match=r"15\.3 mrad.*gpts >= 335"):
        load_simulation_config("cpu", overrides={"gpts": 256})


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_simulation_config("gpu")
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_simulation_config("cpu", str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_simulation_config("cpu", str(tmp_path / "missing.yaml"))


def test_inconsistent_ranges_are_rejected():
    with pytest.raises(ConfigError, match="snr_band_A"):
        load_simulation_config("cpu", overrides={"image_lr": {"snr_band_A": [5, 8]}})
    with pytest.raises(ConfigError, match="defocus_range_A"):
        load_simulation_config("cpu", overrides={"image_lr": {"defocus_range_A": [-500, -1500]}})
