"""The one place network inputs and targets are made: used by training and by the phaser.

Inputs (channels): the low-res image, normalised per image (its scale is the dose's, not the
molecule's), and the engine's σV and the spread of its kept solutions, divided by a fixed scale
(their absolute scale is physical and kept). Target: σV (the projected potential × σ) divided
by the same scale, so outputs convert back to radians with `TARGET_SCALE`.
"""

from __future__ import annotations

import numpy as np

#: σ: the interaction parameter at 200 kV, rad per V·Å (abTEM's projected potential unit).
SIGMA_200KV = 7.29e-4
TARGET_SCALE = 0.05  # rad: typical σV inside a protein
#: the last element of a sample's noise key (dataset seed, sample index, NOISE_KEY): engine
#: sidecars at a dose and training draw the same counts for the same sample
NOISE_KEY = 7
INPUT_CHANNELS = ("image_lr", "engine", "engine_spread")

#: how `model_inputs` normalises, as written into phaser cards
INPUT_NORMALISATION = {"image_lr": "(image - median) / std, per image",
                       "engine": f"engine sigma*V (rad) / {TARGET_SCALE}",
                       "engine_spread": f"std of the engine's kept solutions (rad) / {TARGET_SCALE}"}


def model_inputs(image_lr: np.ndarray, engine_sigma_v: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(3, S, S) float32 from one particle's low-res image and the engine's result."""
    lr = np.asarray(image_lr, np.float64)
    deviation = lr.std()
    lr = (lr - np.median(lr)) / (deviation if deviation > 0 else 1.0)
    return np.stack([lr, np.asarray(engine_sigma_v, np.float64) / TARGET_SCALE,
                     np.asarray(spread, np.float64) / TARGET_SCALE]).astype(np.float32)


def counting_noise(diffraction: np.ndarray, dose_e_per_A2: float | None, box_A: float,
                   key: tuple[int, ...]) -> np.ndarray:
    """The pattern (fraction of electrons per pixel) as counted at a dose (electrons per Å² over
    the box): Poisson counts / electrons, from a generator seeded by `key`. None: unchanged."""
    if dose_e_per_A2 is None:
        return diffraction
    electrons = dose_e_per_A2 * box_A**2
    return np.random.default_rng(list(key)).poisson(np.clip(diffraction, 0, None) * electrons) / electrons


def model_target(potential: np.ndarray) -> np.ndarray:
    """(1, S, S) float32 training target from a dataset sample's projected potential (V·Å)."""
    return (np.asarray(potential, np.float64) * SIGMA_200KV / TARGET_SCALE)[None].astype(np.float32)
