"""`simed evaluate`: the phaser against the low-res input and classical phasing, on the same
samples, with a shuffled-diffraction control.

Per sample and per protein: FRC₀.₅ (Å) against the target, SSIM (reported, not ranked by),
and the Fourier R-factor of each method's σV estimate against the measured diffraction (the
number a user can check on real data). The control gives every particle the diffraction of
another orientation of the same protein: a phaser that uses the data must get worse.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from simed_stream.errors import SimedError
from simed_stream.metrics import frc, ssim
from simed_stream.phasing.classical import Geometry, HIOSettings, low_res_start, phase
from simed_stream.phasing.inference import Phaser, sigma_v_fourier_r
from simed_stream.phasing.preprocess import TARGET_SCALES, model_target

log = logging.getLogger(__name__)
#: gan_raw: the network's output before the data-consistency projection (an ablation in every
#: report, for models trained with it; the same as gan for models without)
METHODS = ("gan", "lowres_input", "classical", "gan_shuffled", "gan_raw")


def evaluate(model_path: str | Path, dataset: str | Path, out: str | Path, samples_per_protein: int = 8,
             proteins: list[str] | None = None, seed: int = 0, hio: HIOSettings = HIOSettings(),
             passes: int = 1) -> dict:
    """passes > 1 adds `gan_ensemble`: the mean of the network's outputs for the stored classical
    run and passes − 1 more from random starts (what `--uncertainty-passes` does live)."""
    phaser = Phaser(model_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with h5py.File(dataset, "r") as f:
        geometry = Geometry.from_attrs(f.attrs)
        if geometry != phaser.geometry:
            raise SimedError(f"{dataset} was simulated with another geometry than the model was trained on "
                             f"({geometry} vs {phaser.geometry})")
        names = [n.decode() if isinstance(n, bytes) else n for n in f["protein_name"][:]]
        protein_id = f["protein_id"][:]
        trained_on = set(phaser.card["training"]["proteins"])
        seen = sorted(trained_on & (set(proteins) if proteins else set(names)))
        if seen:
            log.warning("proteins %s were used in training: their scores do not measure generalisation", seen)
        sidecar_path = Path(dataset).with_suffix(".classical.h5")
        sidecar = h5py.File(sidecar_path, "r") if sidecar_path.exists() else None
        if sidecar is not None:  # the control's classical run must use the same settings as the stored ones
            stored = json.loads(sidecar.attrs["identity"])["settings"]
            hio = HIOSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
        rows = []
        unknown = sorted(set(proteins or []) - set(names))
        if unknown:
            raise SimedError(f"proteins {unknown} are not in {dataset} (it holds {names})")
        for p, name in enumerate(names):
            if proteins and name not in proteins:
                continue
            members = np.flatnonzero(protein_id == p)
            chosen = np.sort(rng.permutation(members)[:samples_per_protein])
            if len(chosen) < 2:
                raise SimedError(f"{name} has fewer than 2 samples: the shuffled control needs another orientation")
            donors = np.roll(chosen, 1)  # another orientation of the same protein
            for i, donor in zip(chosen, donors):
                rows.append(_score(f, sidecar, int(i), int(donor), name, phaser, geometry, hio, passes))
        if sidecar is not None:
            sidecar.close()
    report = _report(rows, phaser, dataset, seen)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plots(rows, out)
    return report


def _score(f, sidecar, i: int, donor: int, name: str, phaser: Phaser, geometry: Geometry, hio: HIOSettings,
           passes: int = 1) -> dict:
    lr = f["image_lr"][i].astype(np.float64)
    diffraction = f["diffraction"][i].astype(np.float64)
    shuffled_diffraction = f["diffraction"][donor].astype(np.float64)
    classical = sidecar["classical"][i] if sidecar is not None and sidecar["done"][i] else phase(diffraction, lr, geometry, hio)
    classical_shuffled = phase(shuffled_diffraction, lr, geometry, hio)
    out = phaser(np.stack([lr, lr]), np.stack([classical, classical_shuffled]), np.stack([diffraction, shuffled_diffraction]))
    raw = phaser(lr[None], classical[None], diffraction[None], consistency=False)[0]
    target = model_target({"potential": f["potential"][i], "image_hr": f["image_hr"][i]}, phaser.target)[0]
    scale = TARGET_SCALES[phaser.target]
    estimates = {"gan": out[0], "lowres_input": lr, "classical": classical / scale, "gan_shuffled": out[1],
                 "gan_raw": raw}
    if passes > 1:
        extra = np.stack([phase(diffraction, lr, geometry, hio, np.random.default_rng(k)) for k in range(1, passes)])
        more = phaser(np.repeat(lr[None], passes - 1, 0), extra, np.repeat(diffraction[None], passes - 1, 0))
        estimates["gan_ensemble"] = (out[0] + more.sum(0)) / passes
    sigma_v = {"gan": out[0] * scale, "gan_raw": raw * scale, "gan_ensemble": estimates.get("gan_ensemble", out[0]) * scale, "lowres_input": low_res_start(lr, geometry)[_crop(geometry)],
               "classical": classical, "gan_shuffled": out[1] * scale}
    pixel = geometry.image_pixel_A
    row = {"index": i, "protein": name, "frc_curve": {}, "frc05_A": {}, "ssim": {}, "fourier_r": {}}
    for method, image in estimates.items():  # gan_ensemble only when passes > 1
        curve = frc(image, target, pixel)
        row["frc_curve"][method] = curve.frc.tolist()
        row["frc05_A"][method] = curve.resolution_A(0.5)
        row["ssim"][method] = ssim(image, target)
        row["fourier_r"][method] = sigma_v_fourier_r(sigma_v[method], diffraction, geometry)
    row["frequency_inv_A"] = curve.frequency_inv_A.tolist()
    row["images"] = {"lowres_input": lr, "classical": classical / scale, "gan": out[0], "target": target}
    return row


def _crop(geometry: Geometry):
    n, size = geometry.grid_px, geometry.image_size_px
    start = n // 2 - size // 2
    return slice(start, start + size), slice(start, start + size)


def _report(rows: list[dict], phaser: Phaser, dataset, seen: list[str]) -> dict:
    methods = [m for m in METHODS + ("gan_ensemble",) if m in rows[0]["frc05_A"]]

    def mean(key, subset):
        return {m: float(np.nanmean([r[key][m] for r in subset])) for m in methods}

    proteins = sorted({r["protein"] for r in rows})
    return {
        "dataset": str(dataset), "model_sha256": phaser.card.get("sha256"), "target": phaser.target,
        "samples": len(rows), "proteins_seen_in_training": seen,
        "mean": {key: mean(key, rows) for key in ("frc05_A", "ssim", "fourier_r")},
        "median": {"frc05_A": {m: float(np.nanmedian([r["frc05_A"][m] for r in rows])) for m in methods}},
        "per_protein": {p: {key: mean(key, [r for r in rows if r["protein"] == p])
                            for key in ("frc05_A", "ssim", "fourier_r")} for p in proteins},
        "per_sample": [{k: r[k] for k in ("index", "protein", "frc05_A", "ssim", "fourier_r")} for r in rows],
    }


def _plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    k = np.array(rows[0]["frequency_inv_A"])
    for method in METHODS:
        ax.plot(k, np.mean([r["frc_curve"][method] for r in rows], axis=0), label=method)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FRC against the target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "frc.png", dpi=90)
    plt.close(fig)
    shown = rows[:: max(1, len(rows) // 6)][:6]
    fig, axes = plt.subplots(len(shown), 4, figsize=(9, 2.4 * len(shown)), squeeze=False)
    for row, r in enumerate(shown):
        for col, key in enumerate(("lowres_input", "classical", "gan", "target")):
            axes[row, col].imshow(r["images"][key], cmap="gray")
            title = key if key == "target" else f"{key} {r['frc05_A'][key]:.1f} Å"
            axes[row, col].set_title(f"{r['protein']}: {title}" if col == 0 else title, fontsize=7)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out / "gallery.png", dpi=80)
    plt.close(fig)
