"""DiffraGAN networks and preprocessing: shapes, determinism, round trips, consistency."""

import numpy as np
import pytest
import torch

from simed_stream.phasing.classical import Geometry, measured_amplitudes
from simed_stream.phasing.network import PatchDiscriminator, UNetGenerator, data_consistency
from simed_stream.phasing.preprocess import SIGMA_200KV, model_inputs, model_target, output_to_physical


def test_shapes_and_patch_count():
    generator, discriminator = UNetGenerator(2, width=8, depth=3), PatchDiscriminator(2, width=8, layers=2)
    x = torch.randn(3, 2, 64, 64)
    y = generator(x)
    assert y.shape == (3, 1, 64, 64)
    assert discriminator(x, y).shape == (3, 1, 14, 14)  # 16-px patches, stride 4


def test_eval_output_is_deterministic_and_independent_of_the_batch():
    torch.manual_seed(0)
    generator = UNetGenerator(2, width=8, depth=3).eval()
    x = torch.randn(4, 2, 64, 64)
    with torch.no_grad():
        alone = generator(x[:1])
        batch = generator(x)
        again = generator(x)
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    torch.testing.assert_close(alone, batch[:1], rtol=1e-5, atol=1e-5)


def test_preprocessing_round_trip_and_scales():
    rng = np.random.default_rng(0)
    potential = rng.uniform(0, 100, (16, 16))
    sample = {"potential": potential, "image_hr": 1 + 0.05 * rng.normal(size=(16, 16))}
    for target in ("potential", "image_hr"):
        back = output_to_physical(model_target(sample, target)[0], target)
        expected = potential * SIGMA_200KV if target == "potential" else sample["image_hr"]
        np.testing.assert_allclose(back, expected, rtol=1e-5)
    lr = 1 + 0.1 * rng.normal(size=(16, 16))
    inputs = model_inputs(lr, potential * SIGMA_200KV)
    assert inputs.shape == (2, 16, 16) and inputs.dtype == np.float32
    assert abs(inputs[0].std() - 1) < 1e-5
    with pytest.raises(ValueError, match="unknown target"):
        model_target(sample, "phase")


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
