"""Benchmark phasing: DiffraGAN inference (batch 1 and 32; CPU, and CUDA when present),
training samples/s, and classical phasing seconds per particle, on the `cpu` preset geometry.

Uses the shipped model when present, else a fresh generator of the same architecture (speed
does not depend on the weights). The last line printed is JSON.

    python tools/bench_phasing.py [--model models/diffragan-cpu/model.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from simed_stream.phasing.classical import Geometry, HIOSettings, phase
from simed_stream.phasing.network import PatchDiscriminator, UNetGenerator, data_consistency
from simed_stream.phasing.training import whitened_mse

GEOMETRY = Geometry(box_A=140.0, image_pixel_A=0.546875, image_size_px=128, wavelength_A=0.0250793,
                    defocus_lr_A=-1000.0, cutoff_lr_mrad=5.0, max_angle_mrad=20.0)


def _generator(model: Path | None, device) -> UNetGenerator:
    generator = UNetGenerator(2, 1, 32, 4)
    if model is not None and model.exists():
        generator.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    return generator.to(device).eval()


def inference_rate(generator, device, batch: int, consistency: bool, seconds: float = 5.0) -> float:
    n = GEOMETRY.grid_px
    x = torch.randn(batch, 2, 128, 128, device=device)
    amplitude = torch.rand(batch, n, n // 2 + 1, device=device)
    known = torch.ones(batch, n, n // 2 + 1, dtype=torch.bool, device=device)
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - start < seconds or done == 0:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = generator(x).float()
            if consistency:
                out = data_consistency(out, amplitude, known, n)
            if device.type == "cuda":
                torch.cuda.synchronize()
            done += batch
    return done / (time.perf_counter() - start)


def training_rate(device, batch: int = 16, steps: int = 4) -> float:
    generator, discriminator = UNetGenerator(2, 1, 32, 4).to(device), PatchDiscriminator(2).to(device)
    opt_g, opt_d = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    bce = torch.nn.BCEWithLogitsLoss()
    x, y = torch.randn(batch, 2, 128, 128, device=device), torch.randn(batch, 1, 128, 128, device=device)
    weights = torch.ones(128, 128, device=device)
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        out = generator(x)
        real, fake = discriminator(x, y), discriminator(x, out.detach())
        loss_d = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        judged = discriminator(x, out)
        loss_g = whitened_mse(out, y, weights) + 0.01 * bce(judged, torch.ones_like(judged))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def classical_seconds(samples: int = 3) -> float:
    rng = np.random.default_rng(0)
    obj = np.zeros((256, 256))
    obj[100:156, 100:156] = rng.uniform(0, 0.05, (56, 56))
    pattern = np.abs(np.fft.fftshift(np.fft.fft2(obj))) ** 2 / 256**4
    pattern = pattern[128 - 112 : 128 + 113, 128 - 112 : 128 + 113]
    image_lr = 1 + 0.01 * rng.normal(size=(128, 128))
    start = time.perf_counter()
    for _ in range(samples):
        phase(pattern, image_lr, GEOMETRY, HIOSettings())
    return (time.perf_counter() - start) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/diffragan-cpu/model.pt"))
    args = parser.parse_args()
    result = {"model": str(args.model) if args.model.exists() else "untrained (same architecture)"}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        generator = _generator(args.model, device)
        for batch in (1, 32):
            rate = inference_rate(generator, device, batch, consistency=True)
            result[f"inference_{device.type}_batch{batch}_particles_per_s"] = round(rate, 2)
            print(f"inference {device.type} batch {batch}: {rate:.1f} particles/s", flush=True)
        rate = training_rate(device)
        result[f"training_{device.type}_samples_per_s"] = round(rate, 2)
        print(f"training {device.type}: {rate:.1f} samples/s", flush=True)
    result["classical_seconds_per_particle"] = round(classical_seconds(), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
