"""The refining network and its inputs: shapes, determinism, residual start, consistency; and
the phaser card that binds engine and network together."""

import json

import numpy as np
import pytest
import torch

from simed_stream.errors import SimedError
from simed_stream.phasing.classical import Geometry, measured_amplitudes
from simed_stream.phasing.inference import Phaser
from simed_stream.phasing.network import PatchDiscriminator, ResidualRefiner, UNetGenerator, data_consistency
from simed_stream.phasing.preprocess import SIGMA_200KV, TARGET_SCALE, model_inputs, model_target

from conftest import write_tiny_phaser
from test_engine import GEOMETRY, toy_particle


def test_shapes_and_patch_count():
    generator, discriminator = UNetGenerator(3, width=8, depth=3), PatchDiscriminator(3, width=8, layers=2)
    x = torch.randn(3, 3, 64, 64)
    y = generator(x)
    assert y.shape == (3, 1, 64, 64)
    assert discriminator(x, y).shape == (3, 1, 14, 14)  # 16-px patches, stride 4


def test_eval_output_is_deterministic_and_independent_of_the_batch():
    torch.manual_seed(0)
    generator = ResidualRefiner(3, width=8, depth=3).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        alone = generator(x[:1])
        batch = generator(x)
        again = generator(x)
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    torch.testing.assert_close(alone, batch[:1], rtol=1e-5, atol=1e-5)


def test_the_refiner_adds_its_correction_to_the_engine_channel():
    refiner = ResidualRefiner(3, width=8, depth=2)
    torch.nn.init.zeros_(refiner.head.weight)
    torch.nn.init.zeros_(refiner.head.bias)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(refiner(x), x[:, 1:2])  # a zero correction returns the engine's result


def test_inputs_and_target_scales():
    rng = np.random.default_rng(0)
    potential = rng.uniform(0, 100, (16, 16))
    np.testing.assert_allclose(model_target(potential)[0] * TARGET_SCALE, potential * SIGMA_200KV, rtol=1e-5)
    lr = 1 + 0.1 * rng.normal(size=(16, 16))
    inputs = model_inputs(lr, potential * SIGMA_200KV, np.full((16, 16), 0.01))
    assert inputs.shape == (3, 16, 16) and inputs.dtype == np.float32
    assert abs(inputs[0].std() - 1) < 1e-5 and abs(np.median(inputs[0])) < 1e-5
    np.testing.assert_allclose(inputs[1], potential * SIGMA_200KV / TARGET_SCALE, rtol=1e-5)
    np.testing.assert_allclose(inputs[2], 0.2, rtol=1e-5)


def test_data_consistency_imposes_the_measured_magnitudes_and_keeps_consistent_images():
    geometry = Geometry(box_A=35.0, image_pixel_A=0.547, image_size_px=32, wavelength_A=0.02508,
                        defocus_lr_A=-1000.0, cutoff_lr_mrad=5.0, max_angle_mrad=20.0)
    n = geometry.grid_px
    rng = np.random.default_rng(1)
    truth = np.zeros((n, n))
    truth[n // 2 - 10 : n // 2 + 10, n // 2 - 10 : n // 2 + 10] = rng.uniform(0, 0.05, (20, 20))
    pattern = np.abs(np.fft.fftshift(np.fft.fft2(truth))) ** 2 / n**4
    side = 2 * int(0.797 * geometry.box_A) + 1
    pattern = pattern[n // 2 - side // 2 : n // 2 + side // 2 + 1, n // 2 - side // 2 : n // 2 + side // 2 + 1]
    amplitude, known, _ = (torch.as_tensor(a[None, :, : n // 2 + 1]) for a in measured_amplitudes(pattern, geometry))
    crop = truth[n // 2 - 16 : n // 2 + 16, n // 2 - 16 : n // 2 + 16]
    image = torch.as_tensor(crop[None, None])
    np.testing.assert_allclose(data_consistency(image, amplitude, known, n)[0, 0].numpy(), crop, atol=1e-3 * crop.max())
    wrong = torch.as_tensor(rng.normal(0, 0.02, (1, 1, 32, 32)))  # white: no resemblance
    projected = data_consistency(wrong, amplitude, known, n)

    def agreement(image):
        padded = torch.nn.functional.pad(image[:, 0], (n // 2 - 16, n // 2 - 16, n // 2 - 16, n // 2 - 16))
        return torch.corrcoef(torch.stack([torch.fft.rfft2(padded).abs()[known], amplitude[known]]))[0, 1]

    # the crop back to the image field re-mixes frequencies, so agreement is high, not perfect
    assert agreement(wrong) < 0.3 < 0.8 < agreement(projected)


def test_a_phaser_card_runs_engine_and_network_and_flags_bad_particles(tmp_path):
    folder = write_tiny_phaser(tmp_path / "phaser", dict(GEOMETRY.__dict__))
    phaser = Phaser(folder, "cpu")
    diffraction, image_lr, truth = toy_particle(0)
    batch = phaser(np.stack([diffraction, diffraction * np.nan]), np.stack([image_lr, image_lr]))
    assert batch.flags[0] is None and "non-finite" in batch.flags[1]
    assert batch.sigma_v.shape == (2, 32, 32) and np.all(batch.sigma_v[1] == 0)
    assert np.isfinite(batch.fourier_r[0]) and np.isnan(batch.fourier_r[1])
    engine_only = Phaser(write_tiny_phaser(tmp_path / "engine", dict(GEOMETRY.__dict__), network=False), "cpu")
    assert engine_only.network is None and engine_only.sha256 != phaser.sha256
    np.testing.assert_array_equal(engine_only(diffraction[None], image_lr[None]).sigma_v[0], batch.engine[0])


def test_bad_cards_get_specific_errors(tmp_path):
    folder = write_tiny_phaser(tmp_path / "phaser", dict(GEOMETRY.__dict__))
    with pytest.raises(SimedError, match="no phaser card"):
        Phaser(tmp_path / "nowhere")
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes() + b"x")
    with pytest.raises(SimedError, match="not the file its card describes"):
        Phaser(folder)
    card = json.loads((folder / "model_card.json").read_text())
    card["format"] = "simed-diffragan/1"
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(SimedError, match="this version reads 'simed-phaser/2'"):
        Phaser(folder)


def test_counting_noise_is_poisson_at_the_dose_and_reproducible_per_key():
    from simed_stream.phasing.preprocess import counting_noise

    pattern = np.full((200, 200), 1e-4)  # fraction of the electrons per pixel
    box_A, dose = 10.0, 1e4  # 1e6 electrons over the box: 100 per pixel
    counted = counting_noise(pattern, dose, box_A, (1, 2, 3))
    electrons = counted * dose * box_A**2
    np.testing.assert_allclose(electrons, np.rint(electrons), atol=1e-9)  # whole electrons
    assert electrons.mean() == pytest.approx(100, rel=0.01) and electrons.var() == pytest.approx(100, rel=0.05)
    np.testing.assert_array_equal(counting_noise(pattern, dose, box_A, (1, 2, 3)), counted)
    assert not np.array_equal(counting_noise(pattern, dose, box_A, (1, 2, 4)), counted)
    assert counting_noise(pattern, None, box_A, (1, 2, 3)) is pattern
