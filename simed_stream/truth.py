"""Scores against the ground truth a simulated scan carries (`simed simulate scan`): picking
(one-to-one within half a diameter) and the FRC₀.₅ of each phased particle against its true σV.
Only simulated captures have a truth; the demo and `simed reprocess` of such a capture use it."""

from __future__ import annotations

import numpy as np

from simed_stream.localise import score_picks
from simed_stream.metrics import frc
from simed_stream.phasing.preprocess import SIGMA_200KV
from simed_stream.records import PhasedParticle


def score_against_truth(picks_yx: np.ndarray, phased: list[PhasedParticle], truth: dict, diameter_px: float,
                        pixel_A: float) -> tuple[dict, dict | None]:
    """(picking scores, FRC₀.₅ mean/median/count over the phased particles matched to a truth, or None)."""
    radius_px = 0.5 * diameter_px
    pick_score = score_picks(np.asarray(picks_yx), truth["yx_overview_px"], radius_px).as_dict()
    if not phased:
        return pick_score, None
    phased_yx = np.array([p.particle.yx_overview_px for p in phased])
    values = []
    for pick_index, truth_index in score_picks(phased_yx, truth["yx_overview_px"], radius_px).matched:
        target = truth["potential"][truth_index] * SIGMA_200KV
        # the crop is centred on the pick, the truth on the particle: undo the picking error
        # (whole pixels, as the crop was cut) so the FRC measures phasing, not picking
        offset = np.rint(phased_yx[pick_index]).astype(int) - np.rint(truth["yx_overview_px"][truth_index]).astype(int)
        aligned = np.roll(phased[pick_index].image, tuple(offset), axis=(0, 1))
        values.append(frc(aligned, target, pixel_A).resolution_A(0.5))
    return pick_score, {"mean": float(np.nanmean(values)) if values else None,
                        "median": float(np.nanmedian(values)) if values else None, "particles": len(values)}
