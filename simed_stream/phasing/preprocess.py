"""The one place model inputs and targets are made: used by training and by live inference.

Inputs (channels): the low-res image, normalised per image (its scale is the dose's, not the
molecule's), and the classical phasing result σV divided by a fixed scale (its absolute scale
is physical and kept). Targets: σV (`potential` × σ) or the high-res image's contrast, both
divided by fixed scales, so outputs convert back to physical units with the model card.
"""

from __future__ import annotations

import numpy as np

#: σ: the interaction parameter at 200 kV, rad per V·Å (abTEM's projected potential unit).
SIGMA_200KV = 7.29e-4
CLASSICAL_SCALE = 0.05  # rad: typical σV inside a protein
TARGET_SCALES = {"potential": 0.05, "image_hr": 0.1}  # rad; the hr contrast is ~2σV
INPUT_CHANNELS = ("image_lr", "classical")


#: how `model_inputs` normalises, as written into model cards
INPUT_NORMALISATION = {"image_lr": "(image - median) / std, per image",
                       "classical": f"classical sigma*V (rad) / {CLASSICAL_SCALE}"}


def model_inputs(image_lr: np.ndarray, classical: np.ndarray) -> np.ndarray:
    """(2, S, S) float32 from one particle's low-res image and classical σV."""
    lr = np.asarray(image_lr, np.float64)
    spread = lr.std()
    lr = (lr - np.median(lr)) / (spread if spread > 0 else 1.0)
    return np.stack([lr, np.asarray(classical, np.float64) / CLASSICAL_SCALE]).astype(np.float32)


def model_target(sample: dict, target: str) -> np.ndarray:
    """(1, S, S) float32 training target from a dataset sample's arrays."""
    if target == "potential":
        value = np.asarray(sample["potential"], np.float64) * SIGMA_200KV
    elif target == "image_hr":
        value = np.asarray(sample["image_hr"], np.float64) - 1.0
    else:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(TARGET_SCALES)}")
    return (value / TARGET_SCALES[target])[None].astype(np.float32)


def output_to_physical(output: np.ndarray, target: str) -> np.ndarray:
    """Network output back to σV (rad) or to the high-res intensity."""
    value = np.asarray(output, np.float64) * TARGET_SCALES[target]
    return value if target == "potential" else value + 1.0
