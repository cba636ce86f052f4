"""A shipped phaser at work: classical phasing then the network, on physical inputs.

`Phaser` loads a checkpoint (`weights_only=True`) with its model card and runs the network on
batches (GPU with mixed precision when present). `ParticlePhaser` is what the pipeline calls:
per particle the classical run with the settings the model was trained with (the card's
`classical`), then the network in one batch, and the Fourier R-factor of the result against
the particle's own measured diffraction — the quality number that needs no ground truth.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simed_stream.errors import SimedError
from simed_stream.metrics import fourier_r_factor, spatial_frequencies
from simed_stream.phasing.classical import Geometry, HIOSettings, measured_amplitudes, phase
from simed_stream.phasing.network import UNetGenerator, data_consistency
from simed_stream.phasing.preprocess import TARGET_SCALES, model_inputs

#: shells (1/Å) of the Fourier R-factor; the mean over them is the per-particle number
SHELLS_INV_A = np.array([0.0, 0.2, 0.4, 0.6, 0.8])


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SimedError(f"device {device!r} asked for but CUDA is not available here")
    return torch.device(device)


class Phaser:
    """A trained generator with its model card: physical inputs in, target units out."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        model_path = Path(model_path)
        card_path = model_path.with_name("model_card.json")
        if not model_path.is_file() or not card_path.is_file():
            raise SimedError(f"model {model_path} or its card {card_path} does not exist")
        try:
            self.card = json.loads(card_path.read_text())
            arch = self.card["architecture"]
            name, width, depth, channels = arch["name"], int(arch["width"]), int(arch["depth"]), arch["in_channels"]
            self.geometry = Geometry(**self.card["geometry"])
            self.target = self.card["target"]
            if self.target not in TARGET_SCALES or not isinstance(self.card["consistency"], bool):
                raise ValueError(f"target {self.target!r} / consistency {self.card['consistency']!r}")
            stored = self.card.get("classical")
            self.classical = None if stored is None else HIOSettings(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
        except (ValueError, KeyError, TypeError) as error:
            raise SimedError(f"{card_path} is not a usable simed model card: {error!r}") from None
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if self.card.get("sha256") != digest:
            raise SimedError(f"{model_path} is not the file its card describes (sha256 {digest[:12]}…, card "
                             f"{str(self.card.get('sha256'))[:12]}…): the card's evaluation would not apply")
        self.device = select_device(device)
        self.generator = UNetGenerator(len(channels), 1, width, depth).to(self.device)
        try:
            state = torch.load(model_path, map_location=self.device, weights_only=True)
            self.generator.load_state_dict(state)
        except Exception as error:  # a corrupt or foreign file: say which
            raise SimedError(f"cannot load {model_path} as this card's {name}: {error}") from None
        self.generator.eval()

    @property
    def sha256(self) -> str:
        return self.card.get("sha256", "")

    @torch.no_grad()
    def __call__(self, images_lr: np.ndarray, classicals: np.ndarray, diffractions: np.ndarray,
                 consistency: bool | None = None) -> np.ndarray:
        """consistency: None = as trained (the card); False = the raw network output (ablation)."""
        inputs = torch.as_tensor(np.stack([model_inputs(l, c) for l, c in zip(images_lr, classicals)]), device=self.device)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            output = self.generator(inputs).float()
        if self.card["consistency"] if consistency is None else consistency:
            n = self.geometry.grid_px
            parts = [measured_amplitudes(d.astype(np.float64), self.geometry) for d in diffractions]
            amplitude = torch.as_tensor(np.stack([a[:, : n // 2 + 1] for a, _, _ in parts]) / TARGET_SCALES[self.target],
                                        dtype=torch.float32, device=self.device)
            known = torch.as_tensor(np.stack([k[:, : n // 2 + 1] for _, k, _ in parts]), device=self.device)
            output = data_consistency(output, amplitude, known, n)
        return output.cpu().numpy()[:, 0]


def sigma_v_fourier_r(sigma_v: np.ndarray, diffraction: np.ndarray, geometry: Geometry) -> float:
    """Mean over shells of the Fourier R-factor of a σV image against the measured pattern."""
    n, size = geometry.grid_px, sigma_v.shape[0]
    padded = np.zeros((n, n))
    start = n // 2 - size // 2
    padded[start : start + size, start : start + size] = sigma_v
    amplitude, known, _ = measured_amplitudes(diffraction, geometry)
    k = spatial_frequencies((n, n), geometry.image_pixel_A)
    r = fourier_r_factor(np.abs(np.fft.fft2(padded))[known], amplitude[known], k[known], SHELLS_INV_A)
    return float(np.nanmean(r))


@dataclass
class PhasedBatch:
    sigma_v: np.ndarray  # (n, S, S) σV in rad (target `potential`) or the hr intensity (`image_hr`)
    classical: np.ndarray  # (n, S, S) σV of the classical run
    fourier_r: np.ndarray  # (n,)
    seconds_classical: float
    seconds_network: float
    uncertainty: np.ndarray | None = None  # (n,) with passes > 1: mean per-pixel std / std of the mean image


class ParticlePhaser:
    """Classical run + network + Fourier check for batches of particles.

    passes > 1 gives an uncertainty: the classical run — the stochastic part of the chain, whose
    result depends on where HIO starts — is repeated with `passes - 1` extra random starts
    where the low-res image carries no phase; each goes through the network, the image written
    is the mean and `uncertainty` the mean per-pixel spread relative to the image's contrast."""

    def __init__(self, model_path: str | Path, device: str = "auto", pool=None, passes: int = 1):
        if passes < 1:
            raise SimedError("uncertainty passes must be at least 1")
        self.passes = passes
        self.phaser = Phaser(model_path, device)
        if self.phaser.classical is None:
            raise SimedError(f"the card of {model_path} does not say which classical settings the model was "
                             "trained with (`classical`); it cannot phase live data")
        self.geometry = self.phaser.geometry
        self.pool = pool  # an executor for the classical runs (they dominate the cost)

    def __call__(self, diffractions: np.ndarray, images_lr: np.ndarray) -> PhasedBatch:
        started = time.perf_counter()
        n = len(diffractions)
        # pass 0 is the deterministic run the model was trained on; the others start at random
        jobs = [(d, l, self.geometry, self.phaser.classical, None if k == 0 else k)
                for k in range(self.passes) for d, l in zip(diffractions, images_lr)]
        if self.pool is not None:
            classical = np.stack(list(self.pool.map(_classical, jobs)))
        else:
            classical = np.stack([_classical(job) for job in jobs])
        middle = time.perf_counter()
        repeat = (self.passes,) + (1,) * (np.ndim(images_lr) - 1)
        output = self.phaser(np.tile(images_lr, repeat), classical, np.tile(diffractions, repeat))
        value = output * TARGET_SCALES[self.phaser.target]
        if self.phaser.target == "image_hr":
            value = value + 1.0
        value = value.reshape(self.passes, n, *value.shape[1:])
        uncertainty = None
        if self.passes > 1:
            spread = value.std(axis=0).mean(axis=(1, 2))
            uncertainty = spread / np.maximum(value.mean(axis=0).std(axis=(1, 2)), 1e-12)
        value, classical = value.mean(axis=0), classical[:n]
        fourier_r = np.array([sigma_v_fourier_r(v if self.phaser.target == "potential" else c, d, self.geometry)
                              for v, c, d in zip(value, classical, diffractions)])
        return PhasedBatch(value.astype(np.float32), classical.astype(np.float32), fourier_r,
                           middle - started, time.perf_counter() - middle, uncertainty)


def _classical(job) -> np.ndarray:
    diffraction, image_lr, geometry, settings, seed = job
    rng = None if seed is None else np.random.default_rng(seed)
    return phase(np.asarray(diffraction, np.float64), np.asarray(image_lr, np.float64), geometry, settings, rng)
