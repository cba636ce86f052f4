"""`simed evaluate`: the default phaser against its parts and baselines, on the same samples.

Methods (FRC₀.₅ in Å against σV, per sample, per protein, mean and success rate ≤ 3 Å):
- `gan`: the default phaser's final output — exactly what the stack gets;
- `engine`: the batched phase-retrieval engine alone (the network's input, if there is one);
- `classical`: the old single-start HIO + shrink-wrap in numpy (`classical.phase`, unchanged);
- `lowres_input`: the Wiener estimate of σV from the noisy low-res image;
- `gan_shuffled`: the default phaser given another orientation's diffraction of the same
  protein — a phaser that uses the data must get much worse.
Also the PRTF resolution estimate's rank correlation with the true FRC₀.₅ (`resolution_estimate`),
and wall seconds per particle of the default phaser. With doses, counting noise is added to every
pattern at each dose and the same methods are scored again: the dose–resolution curve.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from simed_stream.arrays import crop_center
from simed_stream.errors import SimedError
from simed_stream.metrics import frc
from simed_stream.phasing.classical import Geometry, HIOSettings, low_res_start, phase
from simed_stream.phasing.inference import Phaser
from simed_stream.phasing.preprocess import SIGMA_200KV, counting_noise

log = logging.getLogger(__name__)
METHODS = ("gan", "engine", "classical", "lowres_input", "gan_shuffled")
SUCCESS_A = 3.0


def evaluate(phaser_path: str | Path, dataset: str | Path, out: str | Path, samples_per_protein: int = 8,
             proteins: list[str] | None = None, seed: int = 0, doses: list[float] | None = None,
             workers: int | None = None, batch_size: int = 8, methods: tuple[str, ...] = METHODS,
             classical: HIOSettings = HIOSettings()) -> dict:
    """Score on `samples_per_protein` samples of each protein; write `out/report.json` and plots.
    `classical`: the baseline's settings (its defaults, unchanged since it was the default)."""
    phaser = Phaser(phaser_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    data = _load(dataset, phaser, samples_per_protein, proteins, seed)
    data["classical_settings"] = classical
    started = time.perf_counter()
    rows = _score_all(phaser, data, None, methods, workers, batch_size, seed)
    seconds = (time.perf_counter() - started)
    report = _report(rows, phaser, data, methods)
    report["seconds_per_particle"] = data["phaser_seconds"] / len(rows)
    report["seconds_total"] = seconds
    if doses:
        report["dose"] = _dose_curve(phaser, data, doses, methods, workers, batch_size, seed, out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plots(rows, out, methods)
    return report


def _load(dataset, phaser: Phaser, samples_per_protein: int, proteins, seed: int) -> dict:
    if not Path(dataset).is_file():
        raise SimedError(f"dataset {dataset} does not exist")
    rng = np.random.default_rng(seed)
    with h5py.File(dataset, "r") as f:
        geometry = Geometry.from_attrs(f.attrs)
        if not geometry.matches(phaser.geometry):
            raise SimedError(f"{dataset} was simulated with another geometry than the phaser was made for "
                             f"({geometry} vs {phaser.geometry})")
        names = [n.decode() if isinstance(n, bytes) else n for n in f["protein_name"][:]]
        masses = f["protein_mass_kDa"][:]
        unknown = sorted(set(proteins or []) - set(names))
        if unknown:
            raise SimedError(f"proteins {unknown} are not in {dataset} (it holds {names})")
        protein_id, done = f["protein_id"][:], f["done"][:]
        chosen, donors = [], []
        for p, name in enumerate(names):
            if proteins and name not in proteins:
                continue
            members = np.flatnonzero((protein_id == p) & done)
            picked = np.sort(rng.permutation(members)[:samples_per_protein])
            if len(picked) < 2:
                raise SimedError(f"{name} has fewer than 2 finished samples: the shuffled control needs another")
            chosen.extend(picked)
            donors.extend(np.roll(picked, 1))  # another orientation of the same protein
        order = np.argsort(chosen)
        chosen, donors = np.asarray(chosen)[order], np.asarray(donors)[order]
        read = lambda name, index: np.stack([f[name][int(i)] for i in index]).astype(np.float64)  # noqa: E731
        data = dict(index=chosen, protein=[names[protein_id[i]] for i in chosen],
                    mass_kDa={n: float(m) for n, m in zip(names, masses)},
                    diffraction=read("diffraction", chosen), donor_diffraction=read("diffraction", donors),
                    image_lr=read("image_lr", chosen), target=read("potential", chosen) * SIGMA_200KV,
                    box_A=float(f.attrs["box_A"]), geometry=geometry, dataset=str(dataset))
    training = phaser.card.get("training") or {}
    seen = sorted(set(training.get("proteins", [])) | set(training.get("validation_proteins", [])))
    data["seen"] = sorted(set(seen) & set(data["protein"]))
    if data["seen"]:
        log.warning("proteins %s were used to make this phaser: their scores do not measure generalisation",
                    data["seen"])
    return data


def _score_all(phaser: Phaser, data: dict, diffraction: np.ndarray | None, methods, workers: int, batch_size: int,
               seed: int) -> list[dict]:
    """Every method on every sample; `diffraction` replaces the stored patterns (dose runs)."""
    geometry, pixel = phaser.geometry, phaser.geometry.image_pixel_A
    patterns = data["diffraction"] if diffraction is None else diffraction
    images, count = data["image_lr"], len(data["index"])
    estimates: dict[str, np.ndarray] = {}
    phased = _phase_batches(phaser, patterns, images, batch_size)
    data["phaser_seconds"] = phased["seconds"]
    estimates["gan"], estimates["engine"] = phased["sigma_v"], phased["engine"]
    if "gan_shuffled" in methods:
        estimates["gan_shuffled"] = _phase_batches(phaser, data["donor_diffraction"], images, batch_size)["sigma_v"]
    if "classical" in methods:
        jobs = [(patterns[i], images[i], geometry, data["classical_settings"]) for i in range(count)]
        with ProcessPoolExecutor(workers) as pool:  # the numpy baseline is single-threaded: use every core
            estimates["classical"] = np.stack(list(pool.map(_classical, jobs)))
    if "lowres_input" in methods:
        estimates["lowres_input"] = np.stack([crop_center(low_res_start(l, geometry), geometry.image_size_px)
                                              for l in images])
    rows = []
    for i in range(count):
        row = {"index": int(data["index"][i]), "protein": data["protein"][i], "frc05_A": {}, "frc_curve": {},
               "flag": phased["flags"][i], "resolution_estimate_A": float(phased["resolution_A"][i]),
               "r_free": float(phased["r_free"][i]), "fourier_r": float(phased["fourier_r"][i])}
        for method in methods:
            curve = frc(estimates[method][i], data["target"][i], pixel)
            value = curve.resolution_A(0.5)
            # never reaching 0.5 from ring 2 on means nothing was recovered: score it as the box
            row["frc05_A"][method] = float(value) if np.isfinite(value) else _worst(pixel, geometry)
            row["frc_curve"][method] = curve.frc.tolist()
        row["frequency_inv_A"] = curve.frequency_inv_A.tolist()
        row["images"] = {m: estimates[m][i] for m in ("lowres_input", "classical", "engine", "gan") if m in estimates}
        row["images"]["target"] = data["target"][i]
        rows.append(row)
    return rows


def _worst(pixel_A: float, geometry: Geometry) -> float:
    return geometry.image_size_px * pixel_A / 2  # ring 2 of the image: nothing finer was recovered


def _phase_batches(phaser: Phaser, diffraction: np.ndarray, images_lr: np.ndarray, batch_size: int) -> dict:
    parts = {key: [] for key in ("sigma_v", "engine", "resolution_A", "r_free", "fourier_r", "flags")}
    started = time.perf_counter()
    for first in range(0, len(diffraction), batch_size):
        batch = phaser(diffraction[first : first + batch_size], images_lr[first : first + batch_size])
        for key in parts:
            value = getattr(batch, key)
            parts[key].extend(value if isinstance(value, list) else list(value))
    result = {key: (np.stack(v) if key in ("sigma_v", "engine") else v if key == "flags" else np.asarray(v))
              for key, v in parts.items()}
    result["seconds"] = time.perf_counter() - started
    return result


def _classical(job) -> np.ndarray:
    diffraction, image_lr, geometry, settings = job
    return phase(diffraction, image_lr, geometry, settings)


def _summary(rows: list[dict], methods) -> dict:
    frc05 = {m: np.array([r["frc05_A"][m] for r in rows]) for m in methods}
    return {"mean": {m: float(np.mean(v)) for m, v in frc05.items()},
            "median": {m: float(np.median(v)) for m, v in frc05.items()},
            "success_rate": {m: float(np.mean(v <= SUCCESS_A)) for m, v in frc05.items()}}


def _report(rows: list[dict], phaser: Phaser, data: dict, methods) -> dict:
    from scipy.stats import spearmanr

    proteins = sorted({r["protein"] for r in rows}, key=lambda p: data["mass_kDa"][p])
    overall = _summary(rows, methods)
    estimate = np.array([r["resolution_estimate_A"] for r in rows])
    truth = np.array([r["frc05_A"]["gan"] for r in rows])
    usable = np.isfinite(estimate)
    rho = spearmanr(estimate[usable], truth[usable]).statistic if usable.sum() > 2 else float("nan")
    report = {
        "dataset": data["dataset"], "phaser_sha256": phaser.sha256, "network": phaser.network is not None,
        "samples": len(rows), "proteins_seen_in_making_the_phaser": data["seen"], "success_threshold_A": SUCCESS_A,
        "mean": {"frc05_A": overall["mean"]}, "median": {"frc05_A": overall["median"]},
        "success_rate": overall["success_rate"],
        "per_protein": {}, "size_bins": {},
        "resolution_estimate": {"spearman": float(rho), "mean_A": float(np.nanmean(estimate)),
                                "samples": int(usable.sum())},
        "flagged": sum(1 for r in rows if r["flag"]),
        "per_sample": [{k: r[k] for k in ("index", "protein", "frc05_A", "resolution_estimate_A", "r_free",
                                           "fourier_r", "flag")} for r in rows],
    }
    for p in proteins:
        summary = _summary([r for r in rows if r["protein"] == p], methods)
        report["per_protein"][p] = {"mass_kDa": data["mass_kDa"][p], "frc05_A": summary["mean"],
                                    "median_frc05_A": summary["median"], "success_rate": summary["success_rate"]}
    for low, high in ((5, 12), (12, 20), (20, 40)):
        members = [r for r in rows if low <= data["mass_kDa"][r["protein"]] < high]
        if members:
            summary = _summary(members, methods)
            report["size_bins"][f"{low}-{high} kDa"] = {
                "proteins": sorted({r["protein"] for r in members}), "frc05_A": summary["mean"],
                "success_rate": summary["success_rate"]}
    return report


def _dose_curve(phaser: Phaser, data: dict, doses: list[float], methods, workers: int, batch_size: int, seed: int,
                out: Path) -> dict:
    """Counting noise at each dose (electrons per Å² over the box), every method scored again."""
    curve_methods = tuple(m for m in methods if m != "gan_shuffled")
    curve = {}
    for dose in doses:
        noisy = np.stack([counting_noise(d, dose, data["box_A"], (seed, int(index), int(dose)))
                          for d, index in zip(data["diffraction"], data["index"])])
        rows = _score_all(phaser, data, noisy, curve_methods, workers, batch_size, seed)
        summary = _summary(rows, curve_methods)
        curve[f"{dose:g}"] = {"dose_e_per_A2": dose, "frc05_A": summary["mean"], "median_frc05_A": summary["median"],
                              "success_rate": summary["success_rate"]}
        log.info("dose %g e/Å²: %s", dose, {m: round(v, 2) for m, v in summary["mean"].items()})
    result = {"doses_e_per_A2": list(doses), "curve": curve,
              "dose_for_3A": {m: _dose_for(doses, [curve[f"{d:g}"]["median_frc05_A"][m] for d in doses])
                              for m in curve_methods},
              "note": "counting noise on the diffraction only; dose_for_3A: the lowest dose from which the median "
                      "FRC0.5 stays at or below 3 Å (log-interpolated), null if never"}
    _plot_dose(result, curve_methods, out)
    return result


def _dose_for(doses: list[float], values: list[float], goal_A: float = SUCCESS_A) -> float | None:
    """Lowest dose from which the curve stays ≤ goal, log-interpolated between measured doses."""
    order = np.argsort(doses)
    d, v = np.asarray(doses, float)[order], np.asarray(values, float)[order]
    good = v <= goal_A
    if not good[-1]:
        return None
    first = len(good) - np.argmin(good[::-1]) if not good.all() else 0
    if first == 0:
        return float(d[0])
    low, high = first - 1, first  # v[low] > goal >= v[high]
    fraction = (v[low] - goal_A) / (v[low] - v[high])
    return float(np.exp(np.log(d[low]) + fraction * (np.log(d[high]) - np.log(d[low]))))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(path: Path, curves: dict[str, tuple], xlabel: str, ylabel: str, line_at: float,
               log: bool = False) -> None:
    """One figure of labelled (x, y) curves with a dashed reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in curves.items():
        ax.plot(x, y, "o-" if log else "-", label=label)
    ax.axhline(line_at, color="grey", lw=0.8, ls="--")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_dose(result: dict, methods, out: Path) -> None:
    doses = result["doses_e_per_A2"]
    curves = {m: (doses, [result["curve"][f"{d:g}"]["median_frc05_A"][m] for d in doses]) for m in methods}
    _line_plot(out / "dose.png", curves, "diffraction dose (e/Å² over the box)", "median FRC₀.₅ (Å)", SUCCESS_A,
               log=True)


def _plots(rows: list[dict], out: Path, methods) -> None:
    k = np.array(rows[0]["frequency_inv_A"])
    curves = {m: (k, np.mean([r["frc_curve"][m] for r in rows], axis=0)) for m in methods}
    _line_plot(out / "frc.png", curves, "spatial frequency (1/Å)", "mean FRC against σV", 0.5)
    plt = _pyplot()
    shown = rows[:: max(1, len(rows) // 6)][:6]
    columns = [c for c in ("lowres_input", "classical", "engine", "gan", "target") if c in shown[0]["images"]]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.3 * len(columns), 2.4 * len(shown)), squeeze=False)
    for row, r in enumerate(shown):
        for col, key in enumerate(columns):
            axes[row, col].imshow(r["images"][key], cmap="gray")
            title = key if key == "target" else f"{key} {r['frc05_A'][key]:.1f} Å"
            axes[row, col].set_title(f"{r['protein']}: {title}" if col == 0 else title, fontsize=7)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out / "gallery.png", dpi=80)
    plt.close(fig)
