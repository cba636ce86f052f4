"""A phaser at work: the phase-retrieval engine, then (if its card names one) a network.

A phaser is a *card* (`model_card.json`, format `simed-phaser/2`): the geometry it was made
for, the engine's settings and, optionally, a trained network that refines the engine's result
(`model.pt` beside the card, a `state_dict` loaded with `weights_only=True`, its sha256 checked).
`Phaser` is what the pipeline, `simed evaluate` and the benchmarks call: batches of particles in,
σV images out, with what needs no ground truth — the Fourier R-factor against the particle's
own pattern, the free R of the engine's search, and the PRTF resolution estimate — and a flag
with the reason for any particle that could not be phased.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simed_stream.arrays import embed_center
from simed_stream.errors import SimedError
from simed_stream.metrics import fourier_r_factor, spatial_frequencies
from simed_stream.phasing.classical import Geometry, measured_amplitudes
from simed_stream.phasing.engine import EngineSettings, PhaseRetrievalEngine, select_device
from simed_stream.phasing.network import ResidualRefiner, data_consistency
from simed_stream.phasing.preprocess import INPUT_CHANNELS, TARGET_SCALE, model_inputs

CARD_FORMAT = "simed-phaser/2"
#: shells (1/Å) of the Fourier R-factor; the mean over them is the per-particle number
SHELLS_INV_A = np.array([0.0, 0.2, 0.4, 0.6, 0.8])


def card_path(path: str | Path) -> Path:
    """A phaser folder, its card, or the network file beside a card → the card's path."""
    path = Path(path)
    if path.is_dir():
        return path / "model_card.json"
    if path.suffix == ".pt":
        return path.with_name("model_card.json")
    return path


def read_card(path: str | Path) -> dict:
    path = card_path(path)
    if not path.is_file():
        raise SimedError(f"no phaser card at {path} (give a phaser folder such as models/phaser-cpu)")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SimedError(f"{path} is not a readable phaser card: {error}") from None
    if card.get("format") != CARD_FORMAT:
        raise SimedError(f"{path} is a {card.get('format')!r} card; this version reads {CARD_FORMAT!r} "
                         "(re-make it with tools/ship_model.py)")
    return card


def sigma_v_fourier_r(sigma_v: np.ndarray, diffraction: np.ndarray, geometry: Geometry) -> float:
    """Mean over shells of the Fourier R-factor of a σV image against the measured pattern."""
    n = geometry.grid_px
    amplitude, known, _ = measured_amplitudes(diffraction, geometry)
    k = spatial_frequencies((n, n), geometry.image_pixel_A)
    image = np.abs(np.fft.fft2(embed_center(np.asarray(sigma_v, np.float64), n)))
    return float(np.nanmean(fourier_r_factor(image[known], amplitude[known], k[known], SHELLS_INV_A)))


@dataclass
class PhasedBatch:
    sigma_v: np.ndarray  # (n, S, S) σV in rad: what goes into the stack
    engine: np.ndarray  # (n, S, S) the engine's result alone (the network's input)
    fourier_r: np.ndarray  # (n,) of sigma_v against the particle's own pattern
    r_free: np.ndarray  # (n,) the engine's free R
    resolution_A: np.ndarray  # (n,) PRTF estimate, needs no ground truth
    uncertainty: np.ndarray  # (n,) spread of the engine's kept solutions / contrast of the image
    flags: list  # per particle: None, or why it was not phased (its image is then zeros)
    seconds_engine: float
    seconds_network: float


class Phaser:
    """A phaser card made executable: `phaser(diffractions, images_lr)` → `PhasedBatch`."""

    def __init__(self, path: str | Path, device: str = "auto", engine_settings: EngineSettings | None = None):
        card_file = card_path(path)
        self.card = read_card(card_file)
        try:
            self.geometry = Geometry(**self.card["geometry"])
            self.settings = engine_settings or EngineSettings.from_json(self.card["engine"])
            network = self.card.get("network")
        except (KeyError, TypeError, ValueError) as error:
            raise SimedError(f"{card_file} is not a usable phaser card: {error!r}") from None
        self.device = select_device(device)
        self.engine = PhaseRetrievalEngine(self.geometry, self.settings, self.device)
        self.fanout = None  # a `fanout.PhasingFanout`: the engine then runs on its workers
        self.network = None if network is None else self._load_network(card_file, network)
        # what identifies this phaser in a STAR file: the card's content and the weights
        self.sha256 = hashlib.sha256(json.dumps({"engine": self.settings.to_json(), "geometry": self.card["geometry"],
                                                 "network": network}, sort_keys=True).encode()).hexdigest()

    def _load_network(self, card_file: Path, network: dict) -> torch.nn.Module:
        try:
            file = card_file.with_name(network["file"])
            arch = network["architecture"]
            if list(network["inputs"]) != list(INPUT_CHANNELS):
                raise ValueError(f"inputs {network['inputs']} (this version makes {list(INPUT_CHANNELS)})")
            generator = ResidualRefiner(len(INPUT_CHANNELS), int(arch["width"]), int(arch["depth"]))
            self.consistency = bool(network["consistency"])
        except (KeyError, TypeError, ValueError) as error:
            raise SimedError(f"{card_file}: its network entry is not usable: {error!r}") from None
        if not file.is_file():
            raise SimedError(f"{card_file} names the network {file}, which does not exist")
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if network.get("sha256") != digest:
            raise SimedError(f"{file} is not the file its card describes (sha256 {digest[:12]}…, card "
                             f"{str(network.get('sha256'))[:12]}…): the card's evaluation would not apply")
        try:
            generator.load_state_dict(torch.load(file, map_location=self.device, weights_only=True))
        except Exception as error:  # a corrupt or foreign file: say which
            raise SimedError(f"cannot load {file} as this card's network: {error}") from None
        return generator.to(self.device).eval()

    def __call__(self, diffractions: np.ndarray, images_lr: np.ndarray) -> PhasedBatch:
        started = time.perf_counter()
        diffractions = np.asarray(diffractions, np.float64)
        images_lr = np.asarray(images_lr, np.float64)
        if self.fanout is not None:
            found = self.fanout(self.settings, self.geometry, diffractions, images_lr)
        else:
            found = self.engine(diffractions, images_lr)
        middle = time.perf_counter()
        sigma_v = found.sigma_v
        if self.network is not None:
            sigma_v = self.refine(images_lr, found.sigma_v, found.spread, diffractions, found.flags)
        contrast = np.maximum(found.sigma_v.std(axis=(1, 2)), 1e-12)
        fourier_r = np.array([np.nan if flag else sigma_v_fourier_r(v, d, self.geometry)
                              for v, d, flag in zip(sigma_v, diffractions, found.flags)])
        return PhasedBatch(sigma_v.astype(np.float32), found.sigma_v, fourier_r, found.r_free, found.resolution_A,
                           found.spread.mean(axis=(1, 2)) / contrast, found.flags, middle - started,
                           time.perf_counter() - middle)

    @torch.no_grad()
    def refine(self, images_lr, engine_sigma_v, spread, diffractions, flags=None) -> np.ndarray:
        """The network's σV from the engine's result (flagged particles stay as they are)."""
        inputs = torch.as_tensor(np.stack([model_inputs(l, v, s) for l, v, s in zip(images_lr, engine_sigma_v, spread)]),
                                 device=self.device)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            output = self.network(inputs).float()
        if self.consistency:
            n = self.geometry.grid_px
            parts = [measured_amplitudes(d, self.geometry) for d in diffractions]
            amplitude = torch.as_tensor(np.stack([a[:, : n // 2 + 1] for a, _, _ in parts]) / TARGET_SCALE,
                                        dtype=torch.float32, device=self.device)
            known = torch.as_tensor(np.stack([k[:, : n // 2 + 1] for _, k, _ in parts]), device=self.device)
            output = data_consistency(output, amplitude, known, n)
        refined = output.cpu().numpy()[:, 0].astype(np.float64) * TARGET_SCALE
        if flags is not None:
            for i, flag in enumerate(flags):
                if flag:
                    refined[i] = engine_sigma_v[i]
        return refined
