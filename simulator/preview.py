"""A PNG that shows simulated samples side by side, for a person to check at a glance."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

PANELS = (
    ("diffraction", "diffraction (log)"),
    ("image_lr", "low-res, noisy"),
    ("image_lr_clean", "low-res, clean"),
    ("image_hr", "high-res"),
    ("potential", "projected potential"),
)


def write_preview(dataset_path: str | Path, png_path: str | Path, max_samples: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(dataset_path, "r") as f:
        done = np.flatnonzero(f["done"][:])[:max_samples]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["protein_name"][:]]
        protein_ids = f["protein_id"][:]
        mrad_per_px = f.attrs["diffraction_mrad_per_px"]
        pixel_A = f.attrs["image_pixel_A"]
        rows = [{key: f[key][i] for key, _ in PANELS} | {"index": i} for i in done]
    if not rows:
        raise ValueError(f"{dataset_path} holds no finished samples to preview")
    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(3 * len(PANELS), 3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, (key, title) in enumerate(PANELS):
            image = np.log10(np.maximum(row[key], 1e-9)) if key == "diffraction" else row[key]
            half = image.shape[0] / 2 * (mrad_per_px if key == "diffraction" else pixel_A)
            low, high = np.percentile(image, [1, 99.9])  # the direct beam would swamp the log scale
            axes[r, c].imshow(image, cmap="gray", vmin=low, vmax=high, extent=(-half, half, half, -half))
            axes[r, c].set_title(f"{title}" if r else f"{title}\n({'mrad' if key == 'diffraction' else 'Å'})", fontsize=9)
            axes[r, c].tick_params(labelsize=7)
        axes[r, 0].set_ylabel(f"#{row['index']} {names[protein_ids[row['index']]]}")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return png_path
