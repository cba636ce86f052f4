"""The particle chain's settings — `simed reprocess`, `simed run` and `simed replay` share them —
and the model shipped with the code. Kept apart from `chain.py` so that building the command
line does not import the chain's dependencies (scipy, pandas, torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from simed_stream.config import Settings
from simed_stream.localise import PickSettings

from simed_stream.phasing import DEFAULT_PHASER

if TYPE_CHECKING:
    from simed_stream.phasing.inference import Phaser

#: the phaser shipped with the code (`models/phaser-cpu/`: its card, and its network if it has one)
DEFAULT_MODEL = DEFAULT_PHASER


class ChainSettings(Settings):
    model: Path = Field(DEFAULT_MODEL, description="phaser folder or card (default: the shipped phaser-cpu)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto (CUDA, with mixed precision, when present), cpu or cuda")
    picking: PickSettings = PickSettings()
    min_coverage: float = Field(1.0, gt=0, le=1, description="fraction of a position's frames needed to phase "
                                "a particle; below it the particle is flagged")
    batch_size: int = Field(16, ge=1, description="particles per phasing batch and per .mrcs")

    @field_validator("model", mode="before")
    @classmethod
    def _shipped_model_by_default(cls, value):
        return DEFAULT_MODEL if value is None else value  # `model: null` in YAML

    def phaser(self) -> "Phaser":
        from simed_stream.phasing.inference import Phaser

        return Phaser(self.model, self.device)
