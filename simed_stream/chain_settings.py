"""The particle chain's settings — `simed reprocess`, `simed run` and `simed replay` share them —
and the model shipped with the code. Kept apart from `chain.py` so that building the command
line does not import the chain's dependencies (scipy, pandas, torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from simed_stream.config import Settings
from simed_stream.localise import PickSettings

if TYPE_CHECKING:
    from simed_stream.phasing.inference import ParticlePhaser

#: the model shipped with the code (`models/diffragan-cpu/`, with its card)
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "diffragan-cpu" / "model.pt"


class ChainSettings(Settings):
    model: Path = Field(DEFAULT_MODEL, description="model.pt, its model_card.json beside it (default: the shipped "
                        "diffragan-cpu)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto (CUDA, with mixed precision, when present), cpu or cuda")
    picking: PickSettings = PickSettings()
    min_coverage: float = Field(1.0, gt=0, le=1, description="fraction of a position's frames needed to phase "
                                "a particle; below it the particle is flagged")
    batch_size: int = Field(16, ge=1, description="particles per phasing batch and per .mrcs")
    uncertainty_passes: int = Field(1, ge=1, description="K>1: K classical runs (K-1 from random starts) through "
                                    "the network; the stack holds their mean and the STAR an uncertainty per "
                                    "particle (K times the cost)")

    @field_validator("model", mode="before")
    @classmethod
    def _shipped_model_by_default(cls, value):
        return DEFAULT_MODEL if value is None else value  # `model: null` in YAML

    def phaser(self) -> "ParticlePhaser":
        from simed_stream.phasing.inference import ParticlePhaser

        return ParticlePhaser(self.model, self.device, passes=self.uncertainty_passes)
