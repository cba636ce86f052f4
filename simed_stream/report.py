"""A series' report: `report.png` (overview with picks and truth, gallery low-res | phased |
truth, accounting, the resolution estimates) and `picks.json` (every pick with its scan
position, coverage, flag, Fourier R-factor, free R and resolution estimate), so a flagged
particle is visible and explained, never silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simed_stream.records import Particle, PhasedParticle


def write_series_report(out_dir: Path, result, overview: np.ndarray, particles: list[Particle],
                        phased: list[PhasedParticle], truth: dict | None) -> None:
    """phased: in the order they were phased."""
    of = {p.particle.index: p for p in phased}
    good = [p.particle for p in phased]
    phased_images = [p.image for p in phased]

    def measured(index: int, name: str):
        return getattr(of[index], name) if index in of else None

    table = [{"pick": p.index, "y_px": round(p.yx_overview_px[0], 2), "x_px": round(p.yx_overview_px[1], 2),
              "score": round(p.score, 2), "scan_yx": p.scan_yx, "coverage": round(p.coverage, 4),
              "beam_centre_yx": p.beam_centre_yx, "flag": p.flag, "fourier_r": measured(p.index, "fourier_r"),
              "r_free": measured(p.index, "r_free"), "resolution_estimate_A": measured(p.index, "resolution_A")}
             for p in particles]
    (out_dir / "picks.json").write_text(json.dumps(table, indent=1))
    estimates = [p.resolution_A for p in phased]
    _plot(out_dir / "report.png", result, overview, particles, good, phased_images, truth, estimates)


def _plot(path: Path, result, overview, particles, good, phased_images, truth, estimates) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(len(good), 4)
    fig = plt.figure(figsize=(11, 5 + 2.2 * shown))
    grid = fig.add_gridspec(1 + shown, 3, height_ratios=[2.6] + [1] * shown)
    ax = fig.add_subplot(grid[0, :2])
    step = max(1, max(overview.shape) // 1024)  # the overview can be large: show it binned
    ax.imshow(overview[::step, ::step], cmap="gray", extent=(0, overview.shape[1], overview.shape[0], 0))
    for p in particles:
        colour = "lime" if p.flag is None else "orange"
        ax.add_patch(plt.Circle(p.yx_overview_px[::-1], 40, fill=False, color=colour, lw=1))
    if truth is not None:
        yx = truth["yx_overview_px"]
        ax.plot(yx[:, 1], yx[:, 0], "r+", ms=8, label="truth")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"{result.series_id}: picks (green phased, orange flagged)", fontsize=9)
    ax.axis("off")
    text = fig.add_subplot(grid[0, 2])
    text.axis("off")
    lines = [f"status: {result.status}", f"picks: {result.picks}", f"phased: {result.phased}"]
    if result.accounting:
        a = result.accounting
        lines.append(f"frames: {a.get('received')} of {a.get('frames_expected')} received, "
                     f"{a.get('missing')} missing, {a.get('rejected')} rejected")
    lines += [f"flagged ({n}): {reason}" for reason, n in result.flagged.items()]
    finite = [e for e in estimates if np.isfinite(e)]
    if finite:
        lines.append(f"resolution estimate (PRTF, no truth): median {np.median(finite):.2f} Å, "
                     f"range {min(finite):.2f}-{max(finite):.2f} Å")
    if result.pick_score:
        s = result.pick_score
        lines.append(f"picking vs truth: P {s['precision']:.2f} R {s['recall']:.2f} F1 {s['f1']:.2f}")
    if result.frc05_A_vs_truth and result.frc05_A_vs_truth["mean"] is not None:
        lines.append(f"FRC0.5 vs truth: mean {result.frc05_A_vs_truth['mean']:.2f} Å, "
                     f"median {result.frc05_A_vs_truth['median']:.2f} Å")
    lines += [f"{stage}: {seconds:.2f} s" for stage, seconds in result.seconds.items()]
    text.text(0, 1, "\n".join(lines), va="top", fontsize=7, family="monospace", wrap=True)
    truth_image = _truth_images(good, truth)
    for row, (p, image, estimate) in enumerate(zip(good[:shown], phased_images[:shown], estimates), start=1):
        panels = [(p.image_lr, f"pick {p.index}: low-res crop"), (image, f"phased (σV), ≈{estimate:.1f} Å (estimate)")]
        if truth_image.get(p.index) is not None:
            panels.append((truth_image[p.index], "truth"))
        for col, (picture, title) in enumerate(panels):
            a = fig.add_subplot(grid[row, col])
            a.imshow(picture, cmap="gray")
            a.set_title(title, fontsize=7)
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _truth_images(good, truth) -> dict:
    if truth is None or not good:
        return {}
    yx = truth["yx_overview_px"]
    out = {}
    for p in good:
        distance = np.hypot(*(yx - np.array(p.yx_overview_px)).T)
        nearest = int(distance.argmin())
        if distance[nearest] < 40:
            out[p.index] = truth["potential"][nearest]
    return out
