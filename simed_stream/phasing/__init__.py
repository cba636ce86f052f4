"""Phasing: the batched phase-retrieval engine, the optional refining network, the classical
baseline, training and evaluation. A phaser is a card (`models/<name>/model_card.json`)."""

from pathlib import Path

#: the shipped phaser used when a command is given none
DEFAULT_PHASER = Path(__file__).resolve().parents[2] / "models" / "phaser-cpu"
