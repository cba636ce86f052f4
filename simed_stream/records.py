"""The records that flow along the particle path, one type per hop:

    protocol.Frames ─(receiver: sum per scan position)→ PositionSum
      ─(chain: pick, match, cut out)→ Particle ─(phaser, stack)→ PhasedParticle

A `PositionSum` is made by the receiver as it writes the sum into the capture, and by
`CaptureReader.position_sum` from a capture; the live pipeline and `simed reprocess` hand the
same record to the same `SeriesChain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simed_stream.codec import decompress_frame


@dataclass(frozen=True)
class PositionSum:
    """One scan position's summed frame, kept compressed (the capture's chunk) until needed."""

    series_id: str
    position: int  # y * nx + x
    frames_counted: int
    beam_centre_yx: tuple[float, float]  # sub-pixel, hot pixels masked; NaN where no beam was found
    valid: bool  # every frame of the position received and a beam found
    chunk: bytes = field(repr=False)  # `codec.compress_frame` of the sum
    dtype: np.dtype  # the sum's: `kernels.sum_dtype` of the frames'
    shape: tuple[int, int]

    def summed_frame(self) -> np.ndarray:
        return decompress_frame(self.chunk, self.dtype, self.shape)


@dataclass
class Particle:
    """A pick in the overview on its way to the stack; `flag` says why it is not phased."""

    index: int
    yx_overview_px: tuple[float, float]
    score: float
    scan_yx: tuple[int, int] | None = None
    coverage: float = 0.0  # frames counted / frames per position
    beam_centre_yx: tuple[float, float] | None = None
    flag: str | None = None  # None: phaseable
    diffraction: np.ndarray | None = field(default=None, repr=False)  # centred, fraction of electrons per pixel
    image_lr: np.ndarray | None = field(default=None, repr=False)  # the overview's field around the pick


@dataclass(frozen=True)
class PhasedParticle:
    """What the phaser made of a particle; every number here needs no ground truth."""

    particle: Particle
    image: np.ndarray = field(repr=False)  # as written to the stack: σV (rad)
    fourier_r: float  # mean Fourier R-factor of the image against its own diffraction
    r_free: float  # the engine's free R (on measured pixels it never imposed)
    resolution_A: float  # PRTF estimate: where the engine's kept solutions stop agreeing
    uncertainty: float  # spread of the kept solutions relative to the image's contrast
