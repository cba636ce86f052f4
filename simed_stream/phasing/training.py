"""`simed train`: the network that refines the engine's result, on simulated triplets, with a
protein-level split.

The generator is a residual U-Net (`ResidualRefiner`): its inputs are the low-res image and the
engine's σV and spread (from a sidecar made by `tools/precompute_engine.py`), its output the
engine's σV plus a learned correction. Losses: MSE on a spectrally whitened error (each Fourier
ring weighted by the inverse of the targets' mean amplitude there, so high resolution counts as
much as low) plus, optionally, λ × a conditional PatchGAN's BCE (DiffraGAN's adversary; earlier
CPU runs collapsed with it, so λ defaults to 0). With `consistency: true` the output passes the
data-consistency projection. Adam(β1 = 0.5). Seeded, resumable (checkpoint.pt holds networks,
optimisers and step), CUDA with mixed precision when present. `model.pt` is the best validated
model and `model_card.json` a complete phaser card (the engine settings the inputs were made with).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Literal, Optional

import h5py
import numpy as np
import torch
from pydantic import Field, model_validator

from simed_stream.config import StrictModel, read_yaml_mapping, validate_config
from simed_stream.errors import SimedError
from simed_stream.metrics import frc, ring_index
from simed_stream.phasing.classical import Geometry, measured_amplitudes
from simed_stream.phasing.network import PatchDiscriminator, ResidualRefiner, data_consistency
from simed_stream.phasing.preprocess import (INPUT_CHANNELS, INPUT_NORMALISATION, NOISE_KEY, TARGET_SCALE,
                                             counting_noise, model_inputs, model_target)

log = logging.getLogger(__name__)


class TrainConfig(StrictModel):
    datasets: list[str] = Field(..., description="triplet files from `simed simulate dataset`, each with a .engine.h5 beside it")
    sidecars: Optional[list[str]] = Field(None, description="engine sidecars, one per dataset (default DATASET.engine.h5)")
    validation_proteins: list[str] = Field(..., description="protein names held out of training")
    out: str = Field(..., description="run folder")
    consistency: bool = Field(True, description="data-consistency projection on the generator output")
    seed: int = 0
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    beta1: float = 0.5
    lambda_adversarial: float = Field(0.0, ge=0, description="weight of the PatchGAN BCE against the reconstruction")
    width: int = Field(32, gt=0)
    depth: int = Field(4, gt=0)
    patch_layers: int = Field(2, gt=0, description="stride-2 layers of the discriminator: 2 → 16-px patches")
    checkpoint_every: int = Field(200, gt=0)
    sample_every: int = Field(200, gt=0)
    validation_samples: int = Field(32, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_minutes: Optional[float] = Field(None, gt=0, description="stop (and checkpoint) after this wall time")
    init_generator: Optional[str] = Field(None, description="start from this model.pt (fine-tuning); a new run only")

    @model_validator(mode="after")
    def _one_sidecar_per_dataset(self) -> "TrainConfig":
        if self.sidecars is not None and len(self.sidecars) != len(self.datasets):
            raise ValueError(f"sidecars must name one file per dataset ({len(self.datasets)}), got {len(self.sidecars)}")
        return self


class TripletData:
    """Arrays of one or more datasets in memory, with their engine results and geometry."""

    def __init__(self, paths: list[str], sidecars: list[str] | None = None):
        parts = {key: [] for key in ("image_lr", "engine", "spread", "diffraction", "target", "protein")}
        self.geometry = None
        self.engine_settings = None  # what made the network's input: the phaser must repeat it
        self.sidecars = []
        for number, path in enumerate(paths):
            sidecar = Path(sidecars[number]) if sidecars else Path(path).with_suffix(".engine.h5")
            self.sidecars.append(str(sidecar))
            if not sidecar.exists():
                raise SimedError(f"{sidecar} is missing: run tools/precompute_engine.py {path} first")
            with h5py.File(path, "r") as f, h5py.File(sidecar, "r") as c:
                identity = json.loads(c.attrs["identity"])
                if identity["dataset"] != f.attrs["fingerprint"]:
                    raise SimedError(f"{sidecar} was made from another dataset than {path}")
                if not f["done"][:].all():
                    raise SimedError(f"{path} is incomplete: finish `simed simulate dataset` first")
                geometry = Geometry.from_attrs(f.attrs)
                if self.geometry is not None and not self.geometry.matches(geometry):
                    raise SimedError(f"{path} has another geometry than the first dataset")
                self.geometry = geometry
                self.preset = str(f.attrs.get("preset", "custom"))
                if self.engine_settings not in (None, identity["engine"]):
                    raise SimedError(f"{sidecar} was computed with other engine settings than the first dataset's")
                self.engine_settings = identity["engine"]
                # the samples the engine has phased (a sidecar may cover a subset) and not flagged
                usable = c["done"][:] & np.array([not flag for flag in c["flag"].asstr()[:]])
                if not usable.any():
                    raise SimedError(f"{sidecar} holds no phased, unflagged sample of {path}: nothing to train on")
                names = [n.decode() if isinstance(n, bytes) else n for n in f["protein_name"][:]]
                parts["image_lr"].append(f["image_lr"][:][usable])
                parts["engine"].append(c["sigma_v"][:][usable])
                parts["spread"].append(c["spread"][:][usable])
                # the pattern the engine saw: at the sidecar's dose, the same counts it was given
                dose, seed, box_A = identity.get("diffraction_dose"), int(f.attrs["seed"]), float(f.attrs["box_A"])
                parts["diffraction"].append(np.stack([
                    counting_noise(f["diffraction"][i].astype(np.float64), dose, box_A, (seed, int(i), NOISE_KEY))
                    for i in np.flatnonzero(usable)]).astype(np.float32))
                parts["target"].append(np.stack([model_target(v) for v in f["potential"][:][usable]]))
                parts["protein"].extend(names[i] for i in f["protein_id"][:][usable])
        for key, value in parts.items():
            setattr(self, key, np.array(value) if key == "protein" else np.concatenate(value))

    def batch(self, indices: np.ndarray, device, with_consistency: bool) -> dict:
        inputs = np.stack([model_inputs(self.image_lr[i], self.engine[i], self.spread[i]) for i in indices])
        batch = {"inputs": torch.as_tensor(inputs, device=device), "target": torch.as_tensor(self.target[indices], device=device)}
        if with_consistency:
            n = self.geometry.grid_px
            amplitudes, knowns = [], []
            for i in indices:
                amplitude, known, _ = measured_amplitudes(self.diffraction[i].astype(np.float64), self.geometry)
                amplitudes.append(amplitude[:, : n // 2 + 1] / TARGET_SCALE)
                knowns.append(known[:, : n // 2 + 1])
            batch["amplitude"] = torch.as_tensor(np.stack(amplitudes), dtype=torch.float32, device=device)
            batch["known"] = torch.as_tensor(np.stack(knowns), device=device)
        return batch


def ring_weights(targets: np.ndarray) -> np.ndarray:
    """Per-coefficient weights 1/√(mean power of the targets' ring): a whitened error."""
    rings = ring_index(targets.shape[-2:])
    power = (np.abs(np.fft.fft2(targets[:, 0])) ** 2).mean(axis=0)
    mean = np.bincount(rings.ravel(), power.ravel()) / np.bincount(rings.ravel())
    weights = 1.0 / np.sqrt(np.maximum(mean[rings], mean.max() * 1e-8))
    return (weights / weights.mean()).astype(np.float32)


def whitened_mse(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    error = torch.fft.fft2((output - target)[:, 0].float())
    return (error.abs() ** 2 * weights**2).mean() / error.shape[-1] ** 2


def build_generator(config: TrainConfig) -> ResidualRefiner:
    return ResidualRefiner(len(INPUT_CHANNELS), config.width, config.depth)


def train(config: TrainConfig) -> Path:
    """Train (or resume) the run in `config.out`; returns its model.pt (the best validated)."""
    return Trainer(config).run()


class Trainer:
    """One training run: data and split, networks and optimisers (resumed from the checkpoint
    when there is one), then steps with validation, export and checkpoints."""

    METRICS = ["step", "reconstruction", "generator_adversarial", "discriminator", "samples_per_s",
               "val_reconstruction", "val_frc05_A"]

    def __init__(self, config: TrainConfig):
        self.config, self.out = config, Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                                   "cpu" if config.device == "auto" else config.device)
        self.data = data = TripletData(config.datasets, config.sidecars)
        self.train_idx, self.val_idx = self._split()
        self.engine_val = engine_frc(data, self.val_idx)
        log.info("validation: the engine alone scores FRC0.5 %.2f Å on %d samples", self.engine_val, len(self.val_idx))
        self.generator = build_generator(config).to(self.device)
        self.discriminator = PatchDiscriminator(len(INPUT_CHANNELS), layers=config.patch_layers).to(self.device)
        betas = (config.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), config.learning_rate, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), config.learning_rate, betas=betas)
        self.weights = torch.as_tensor(ring_weights(data.target[self.train_idx[:256]]), device=self.device)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.step, self.best_frc = 0, float("inf")
        self.checkpoint = self.out / "checkpoint.pt"
        self.identity = config.model_dump_json(exclude={"steps", "max_minutes", "out"})
        self._start_or_resume()

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        config, protein = self.config, self.data.protein
        unknown = set(config.validation_proteins) - set(protein)
        if unknown:
            raise SimedError(f"validation proteins not in the datasets: {sorted(unknown)}")
        train_idx = np.flatnonzero(~np.isin(protein, config.validation_proteins))
        val_idx = np.flatnonzero(np.isin(protein, config.validation_proteins))
        if not len(train_idx) or not len(val_idx):
            raise SimedError("the split leaves no training or no validation samples")
        return train_idx, self.rng.permutation(val_idx)[: config.validation_samples]

    def _start_or_resume(self) -> None:
        config, device = self.config, self.device
        if config.init_generator and not self.checkpoint.exists():
            self.generator.load_state_dict(torch.load(config.init_generator, map_location=device, weights_only=True))
            log.info("generator initialised from %s", config.init_generator)
        if not self.checkpoint.exists():
            return
        state = torch.load(self.checkpoint, map_location=device, weights_only=True)
        if state["identity"] != self.identity:
            raise SimedError(f"{self.checkpoint} belongs to another configuration; use another `out`")
        for name in ("generator", "discriminator", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(state[name])
        self.step = int(state["step"])
        self.best_frc = float(state.get("best_val_frc05_A", float("inf")))
        self.rng = np.random.default_rng([config.seed, self.step])
        log.info("resuming from step %d", self.step)

    def run(self) -> Path:
        from tqdm import tqdm

        config, metrics_path = self.config, self.out / "metrics.csv"
        new_file, started = not metrics_path.exists(), time.monotonic()
        with open(metrics_path, "a", newline="") as metrics_file:
            writer = csv.writer(metrics_file)
            if new_file:
                writer.writerow(self.METRICS)
            bar = tqdm(total=config.steps, initial=self.step, unit="step", disable=None)
            while self.step < config.steps:
                tick = time.monotonic()
                losses = self.train_step()
                bar.update()
                row = [self.step, *losses, f"{config.batch_size / max(time.monotonic() - tick, 1e-9):.1f}", "", ""]
                out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
                if self.step % config.checkpoint_every == 0 or self.step == config.steps or out_of_time:
                    row[5:] = self.validate_and_save(time.monotonic() - started)
                    bar.set_postfix(val_frc05_A=row[6])
                if self.step % config.sample_every == 0:
                    write_samples(self.out / f"samples-{self.step:06d}.png", self.generator, self.data,
                                  self.val_idx[:4], config, self.device)
                writer.writerow(row)
                metrics_file.flush()
                if out_of_time:
                    log.info("max_minutes reached at step %d; rerun to continue", self.step)
                    break
            bar.close()
        return self.out / "model.pt"

    def train_step(self) -> list[str]:
        """One step (discriminator first when λ > 0); returns the losses as the CSV writes them."""
        config, device, amp = self.config, self.device, self.amp
        batch = self.data.batch(self.rng.choice(self.train_idx, config.batch_size, replace=False), device,
                                config.consistency)
        with torch.autocast(device.type, enabled=amp):
            output = self.generator(batch["inputs"])
        if config.consistency:
            output = data_consistency(output.float(), batch["amplitude"], batch["known"], self.data.geometry.grid_px)
        loss_d = loss_adv = torch.zeros((), device=device)
        if config.lambda_adversarial > 0:  # discriminator: real (inputs, target) against fake (inputs, output)
            with torch.autocast(device.type, enabled=amp):
                real = self.discriminator(batch["inputs"], batch["target"])
                fake = self.discriminator(batch["inputs"], output.detach())
                loss_d = 0.5 * (self.bce(real, torch.ones_like(real)) + self.bce(fake, torch.zeros_like(fake)))
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            with torch.autocast(device.type, enabled=amp):  # generator: reconstruction + λ adversarial
                judged = self.discriminator(batch["inputs"], output)
                loss_adv = self.bce(judged, torch.ones_like(judged))
        loss_rec = whitened_mse(output, batch["target"], self.weights)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_rec + config.lambda_adversarial * loss_adv).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.step += 1
        return [f"{loss_rec.item():.5g}", f"{loss_adv.item():.4g}", f"{loss_d.item():.4g}"]

    def validate_and_save(self, seconds: float) -> list[str]:
        """Validate; export when best (model.pt is the best validated: GAN training can collapse); checkpoint."""
        val_loss, val_frc = validate(self.generator, self.data, self.val_idx, self.config, self.device, self.weights)
        if val_frc < self.best_frc:
            self.best_frc = val_frc
            export_model(self.out, self.generator, self.config, self.data, self.step, val_frc, seconds, self.engine_val)
        save_checkpoint(self.checkpoint, self.generator, self.discriminator, self.opt_g, self.opt_d, self.step,
                        self.identity, self.best_frc)
        return [f"{val_loss:.5g}", f"{val_frc:.3f}"]


@torch.no_grad()
def predict(generator, data: TripletData, indices, config: TrainConfig, device) -> torch.Tensor:
    generator.eval()
    batch = data.batch(np.asarray(indices), device, config.consistency)
    output = generator(batch["inputs"]).float()
    if config.consistency:
        output = data_consistency(output, batch["amplitude"], batch["known"], data.geometry.grid_px)
    generator.train()
    return output


def validate(generator, data, val_idx, config, device, weights) -> tuple[float, float]:
    """(whitened MSE, mean FRC₀.₅ in Å) on the validation samples; a curve that never falls
    below 0.5 from ring 2 on counts as the box (as `simed evaluate` scores it)."""
    losses, resolutions = [], []
    worst = data.geometry.image_size_px * data.geometry.image_pixel_A / 2
    for start in range(0, len(val_idx), config.batch_size):
        indices = val_idx[start : start + config.batch_size]
        output = predict(generator, data, indices, config, device)
        target = torch.as_tensor(data.target[indices], device=device)
        losses.append(whitened_mse(output, target, weights).item())
        for o, t in zip(output.cpu().numpy()[:, 0], data.target[indices][:, 0]):
            value = frc(o, t, data.geometry.image_pixel_A).resolution_A(0.5)
            resolutions.append(value if np.isfinite(value) else worst)
    return float(np.mean(losses)), float(np.mean(resolutions))


def engine_frc(data: TripletData, indices) -> float:
    """The engine's own mean FRC₀.₅ on the same samples: what the network must beat."""
    worst = data.geometry.image_size_px * data.geometry.image_pixel_A / 2
    values = [frc(data.engine[i] / TARGET_SCALE, data.target[i][0], data.geometry.image_pixel_A).resolution_A(0.5)
              for i in indices]
    return float(np.mean([v if np.isfinite(v) else worst for v in values]))


def save_checkpoint(path: Path, generator, discriminator, opt_g, opt_d, step: int, identity: str,
                    best_val_frc05_A: float = float("inf")) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step, "identity": identity,
                "best_val_frc05_A": best_val_frc05_A}, tmp)
    tmp.replace(path)


def export_model(out: Path, generator, config: TrainConfig, data: TripletData, step: int, val_frc: float,
                 seconds: float, engine_val_frc: float) -> None:
    """model.pt (generator state_dict only; load with weights_only=True) and its phaser card."""
    from simed_stream.phasing.inference import CARD_FORMAT

    model_path = out / "model.pt"
    tmp = model_path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in generator.state_dict().items()}, tmp)
    tmp.replace(model_path)
    card = {
        "format": CARD_FORMAT, "preset": data.preset, "geometry": data.geometry.__dict__,
        "engine": data.engine_settings,
        "network": {"file": "model.pt", "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
                    "architecture": {"name": "ResidualRefiner", "width": config.width, "depth": config.depth},
                    "inputs": list(INPUT_CHANNELS), "input_normalisation": INPUT_NORMALISATION,
                    "target": "potential", "target_scale": TARGET_SCALE, "consistency": config.consistency},
        "training": {"datasets": config.datasets, "sidecars": data.sidecars,
                     "proteins": sorted(set(data.protein) - set(config.validation_proteins)),
                     "validation_proteins": config.validation_proteins, "steps": step,
                     "batch_size": config.batch_size, "seconds": round(seconds, 1),
                     "device": str(next(generator.parameters()).device), "validation_frc05_A": round(val_frc, 3),
                     "validation_engine_frc05_A": round(engine_val_frc, 3)},
        "config": json.loads(config.model_dump_json()),
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))


def write_samples(path: Path, generator, data: TripletData, indices, config: TrainConfig, device) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = predict(generator, data, indices, config, device).cpu().numpy()[:, 0]
    fig, axes = plt.subplots(len(indices), 4, figsize=(10, 2.6 * len(indices)), squeeze=False)
    for row, (i, o) in enumerate(zip(indices, output)):
        for col, (image, title) in enumerate(((data.image_lr[i], "low-res input"), (data.engine[i], "engine"),
                                              (o, "refined"), (data.target[i][0], "target (σV)"))):
            axes[row, col].imshow(image, cmap="gray")
            axes[row, col].set_title(title, fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def load_train_config(path: str) -> TrainConfig:
    return validate_config(TrainConfig, read_yaml_mapping(path), path)
