"""`simed simulate scan`: a synthetic specimen scan built from a triplets dataset.

Particles of known protein and orientation sit at random positions in a scanned patch, one per
scan position at most and never in neighbouring positions (so no beam sees two). Each scan
position gets `frames_per_position` sub-frames: the particle's diffraction where the beam hits
one, the bare direct beam elsewhere, shifted by a slow linear descan drift (whole pixels),
Poisson counts at the stated electrons per position, a few hot pixels (listed in the detector's
pixel mask). The overview image is the patch at the dataset's image pixel size: each particle's
noise-free low-res image placed at its position on a flat background, then counting noise at
the dose the dataset's low-res images were simulated with. Frames hold counts as float32 (as a
gain-corrected detector output would): phasing needs ~1e11 electrons per position (measured: HIO
on 2e9 loses 2–6 Å of FRC₀.₅ against noise-free patterns, 1e11 loses nothing), far beyond what a
protein survives and beyond 32-bit integer sums of the direct beam. Counts below 2**24 per pixel
stay exact in float32.

Simplifications, stated: the beam footprint equals the scan step and patterns are those of the
isolated particle (no support film, no partial illumination); drift is in whole pixels.

The series is streamed through the real path — `FakeDetector` → ZeroMQ (loopback IPC) →
`Receiver` — so the file is a capture like any other (`simed detector --capture` replays it,
`simed reprocess` reads it). Ground truth is added afterwards in the group `truth/`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

import h5py
import numpy as np
from pydantic import Field, field_validator, model_validator

from simed_stream.arrays import crop_around
from simed_stream.config import Settings
from simed_stream.detectors.settings import pair_from_text
from simed_stream.errors import SimedError

log = logging.getLogger(__name__)

#: dataset attributes a phaser needs to interpret the capture (copied into `truth/` attrs)
GEOMETRY_ATTRS = ("preset", "box_A", "image_pixel_A", "image_size_px", "wavelength_A", "defocus_lr_A",
                  "cutoff_lr_mrad", "max_angle_mrad", "energy_eV", "diffraction_mrad_per_px", "fingerprint")


Pair = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class ScanSettings(Settings):
    """`simed simulate scan`'s settings: its flags and YAML keys (`--scan-shape 12x12`)."""

    scan_shape: Pair = Field((12, 12), description="scan positions, HxW")
    particles: int = Field(10, ge=1, description="particles in the patch, never in neighbouring positions")
    frames_per_position: int = Field(2, ge=1, description="sub-frames per scan position")
    electrons_per_position: float = Field(1e11, gt=0, allow_inf_nan=False, description="dose per scan position "
                                          "(1e11: what phasing needs, see docs/simulation.md)")
    sig_shape: Pair = Field((256, 256), description="detector frame, HxW")
    drift_px: tuple[int, int] = Field((2, 3), description="direct-beam travel across the whole scan (descan), "
                                      "YxX pixels")
    hot_pixels: int = Field(4, ge=0, description="hot pixels, listed in the detector's mask")
    jitter_fraction: float = Field(0.2, ge=0, lt=0.5, description="particle offset from its position's centre, "
                                   "in scan steps (±)")
    seed: int = Field(0, ge=0, description="seed of positions, jitter, noise and hot pixels")
    batch_frames: int = Field(32, ge=1, description="frames per message")
    dwell_s: float = Field(1e-3, gt=0, allow_inf_nan=False, description="seconds per scan position")

    @field_validator("scan_shape", "sig_shape", "drift_px", mode="before")
    @classmethod
    def _from_text(cls, value):
        """'12x12' (a flag) as well as [12, 12] (YAML)."""
        return pair_from_text(value)

    @model_validator(mode="after")
    def _particles_fit(self) -> "ScanSettings":
        ny, nx = self.scan_shape
        room = ((ny + 1) // 2) * ((nx + 1) // 2)  # positions with no neighbour in common
        if self.particles > room:
            raise ValueError(f"{self.particles} particles do not fit a {ny}x{nx} scan without neighbours "
                             f"(at most {room})")
        return self


def _choose_positions(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """`count` scan positions, no two within one step of each other (random greedy over a shuffle)."""
    ny, nx = shape
    taken = np.zeros(shape, bool)
    chosen = []
    for flat in rng.permutation(ny * nx):
        y, x = divmod(int(flat), nx)
        if taken[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].any():
            continue
        taken[y, x] = True
        chosen.append((y, x))
        if len(chosen) == count:
            return np.array(chosen)
    raise SimedError(f"could not place {count} particles without neighbours in a {ny}x{nx} scan; "
                     "use fewer particles or a larger scan")


def _taper(size: int, width: int) -> np.ndarray:
    """2D cosine edge: the pasted low-res contrast goes smoothly to zero at its crop's border."""
    ramp = np.ones(size)
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
    ramp[:width], ramp[-width:] = edge, edge[::-1]
    return np.outer(ramp, ramp)


class ScanScene:
    """Everything about one synthetic scan: where particles are, what each position records."""

    def __init__(self, dataset: str | Path, settings: ScanSettings):
        self.settings = settings
        rng = np.random.default_rng(settings.seed)
        with h5py.File(dataset, "r") as f:
            if f.attrs.get("format") != "simed-triplets/1":
                raise SimedError(f"{dataset} is not a `simed simulate dataset` file")
            done = np.flatnonzero(f["done"][:])
            if len(done) < settings.particles:
                raise SimedError(f"{dataset} has {len(done)} finished samples; {settings.particles} particles asked")
            self.attrs = {k: f.attrs[k] for k in GEOMETRY_ATTRS}
            self.sample = np.sort(rng.choice(done, settings.particles, replace=False))
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["protein_name"][:]]
            self.protein = [names[i] for i in f["protein_id"][:][self.sample]]
            self.orientation = f["orientation"][self.sample.tolist()]
            self.diffraction = f["diffraction"][self.sample.tolist()].astype(np.float64)
            self.image_lr_clean = f["image_lr_clean"][self.sample.tolist()].astype(np.float64)
            self.image_hr = f["image_hr"][self.sample.tolist()]
            self.potential = f["potential"][self.sample.tolist()]
            self.lr_dose_e_per_A2 = float(np.mean(f["dose_e_per_A2"][self.sample.tolist()]))
        size = int(self.attrs["image_size_px"])
        self.pixel_A = float(self.attrs["image_pixel_A"])
        self.step_px = size  # one image field per scan step: a particle fits in one beam footprint
        self.step_A = size * self.pixel_A
        ny, nx = settings.scan_shape
        side = self.diffraction.shape[1]
        if side > min(settings.sig_shape) - 2 * max(abs(d) for d in settings.drift_px):
            raise SimedError(f"{side}-pixel patterns with drift {settings.drift_px} do not fit a "
                             f"{settings.sig_shape} detector")
        self.positions = _choose_positions(rng, (ny, nx), settings.particles)
        jitter = np.round(rng.uniform(-1, 1, (settings.particles, 2)) * settings.jitter_fraction * size)
        # overview pixel (row, col) = step_px · (scan y, scan x) + offset, with half an image
        # field of margin around the scanned patch so every particle's crop lies inside
        offset = float(size)
        self.affine = np.array([[self.step_px, 0.0, offset], [0.0, self.step_px, offset]])
        self.yx_overview_px = self.positions * self.step_px + offset + jitter  # particle centres
        self.overview = self._overview(rng, (ny * size + size, nx * size + size))
        self.hot = rng.integers(0, settings.sig_shape, size=(settings.hot_pixels, 2))
        self.particle_at = {(int(y), int(x)): i for i, (y, x) in enumerate(self.positions)}
        self.rng = rng

    def _overview(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        size = int(self.attrs["image_size_px"])
        intensity = np.ones(shape)
        taper = _taper(size, size // 8)
        for centre, clean in zip(self.yx_overview_px.astype(int), self.image_lr_clean):
            crop_around(intensity, centre, size)[...] += (clean - np.median(clean)) * taper
        electrons_per_px = self.lr_dose_e_per_A2 * self.pixel_A**2
        return (rng.poisson(np.maximum(intensity, 0) * electrons_per_px) / electrons_per_px).astype(np.float32)

    def pattern(self, y: int, x: int) -> np.ndarray:
        """Expected fraction of the electrons per detector pixel at scan position (y, x)."""
        s = self.settings
        h, w = s.sig_shape
        ny, nx = s.scan_shape
        dy = int(round(s.drift_px[0] * y / max(ny - 1, 1)))
        dx = int(round(s.drift_px[1] * x / max(nx - 1, 1)))
        frame = np.zeros((h, w))
        index = self.particle_at.get((y, x))
        if index is None:
            frame[h // 2 + dy, w // 2 + dx] = 1.0
        else:
            d = self.diffraction[index]
            crop_around(frame, (h // 2 + dy, w // 2 + dx), d.shape[0])[...] = d / d.sum()
        return frame

    def frames(self, y: int, x: int) -> np.ndarray:
        s = self.settings
        mean = self.pattern(y, x) * (s.electrons_per_position / s.frames_per_position)
        counts = self.rng.poisson(np.broadcast_to(mean, (s.frames_per_position, *mean.shape)))
        counts[:, self.hot[:, 0], self.hot[:, 1]] = 2**20  # hot: far above any scattered count
        return counts.astype("<f4")

    def source(self, series_id: str):
        """The scan as a `SeriesSource` for `FakeDetector`."""
        from simed_stream.protocol import scan_order
        from simed_stream.detectors.series_source import SeriesSource

        s = self.settings
        ny, nx = s.scan_shape
        order = scan_order((ny, nx), "raster")
        n = ny * nx * s.frames_per_position
        start_fields = {
            "unique_id": uuid.uuid4().hex,
            "detector": {"model": "ASI Cheetah (simulated)", "sig_shape": list(s.sig_shape), "dtype": "<f4",
                         "bit_depth": 32, "pixel_pitch_um": 55.0},
            "scan": {"nav_shape": [ny, nx], "pattern": "raster", "frames_per_position": s.frames_per_position,
                     "dwell_s": s.dwell_s, "step_A": self.step_A, "rotation_deg": 0.0, "frames_expected": n},
            "optics": {"energy_eV": float(self.attrs["energy_eV"]), "camera_length_mm": 500.0,
                       "convergence_mrad": 0.0, "mrad_per_px": float(self.attrs["diffraction_mrad_per_px"]),
                       "electrons_per_position": s.electrons_per_position},
            "microscope": {"model": "JEOL (simulated)"},
            "trigger_mode": "internal", "encoding": "raw",
            "user_data": {"simulated_scan": {"dataset_fingerprint": str(self.attrs["fingerprint"]),
                                             "seed": s.seed, "particles": s.particles}},
        }
        per_frame_ns = int(s.dwell_s / s.frames_per_position * 1e9)

        def messages():
            yield "series_start", None, start_fields
            t0 = __import__("time").time_ns()
            pending: list[tuple[int, np.ndarray, np.ndarray]] = []
            for p, (y, x) in enumerate(order):
                for sub, frame in enumerate(self.frames(int(y), int(x))):
                    pending.append((p * s.frames_per_position + sub, (y, x), frame))
                    if len(pending) == s.batch_frames:
                        yield "frames", None, _batch(pending, t0, per_frame_ns)
                        pending = []
            if pending:
                yield "frames", None, _batch(pending, t0, per_frame_ns)
            yield "overview_image", None, {"overview_id": 0, "image": self.overview, "pixel_size_A": self.pixel_A,
                                           "affine": self.affine.tolist(), "acquired": "after"}
            yield "series_end", None, None

        mask = np.zeros(s.sig_shape, np.uint8)
        mask[self.hot[:, 0], self.hot[:, 1]] = 1
        return SeriesSource(series_id, start_fields, mask, messages(), s.dwell_s / s.frames_per_position)

    def write_truth(self, f: h5py.File) -> None:
        g = f.create_group("truth")
        g.attrs.update({k: v for k, v in self.attrs.items()})
        g.attrs["settings_json"] = json.dumps(self.settings.model_dump(mode="json"))
        g.attrs["lr_dose_e_per_A2"] = self.lr_dose_e_per_A2
        g.create_dataset("yx_overview_px", data=self.yx_overview_px)
        g.create_dataset("scan_yx", data=self.positions.astype(np.int32))
        g.create_dataset("protein", data=np.array(self.protein, dtype=h5py.string_dtype()))
        g.create_dataset("dataset_index", data=self.sample)
        g.create_dataset("orientation", data=self.orientation)
        g.create_dataset("image_hr", data=self.image_hr, compression="gzip")
        g.create_dataset("potential", data=self.potential, compression="gzip")


def _batch(pending, t0: int, per_frame_ns: int):
    ids = np.array([i for i, _, _ in pending], np.uint64)
    scan_yx = np.array([yx for _, yx, _ in pending], np.int32)
    stamps = (t0 + ids * per_frame_ns).astype(np.uint64)
    return ids, scan_yx, stamps, np.stack([frame for _, _, frame in pending])


def simulate_scan(dataset: str | Path, out: str | Path, settings: ScanSettings = ScanSettings()) -> Path:
    """Build the scene, stream it through detector and receiver, add the truth; returns `out`."""
    from simed_stream.ingest import Receiver, ReceiverSettings
    from simed_stream.detectors.simed.fake import FakeDetector

    out = Path(out)
    if out.exists():
        raise SimedError(f"{out} exists; choose another --out (captures are never overwritten)")
    if not out.parent.is_dir():
        raise SimedError(f"the directory of {out} does not exist")
    scene = ScanScene(dataset, settings)
    with tempfile.TemporaryDirectory(prefix="simed-scan-", dir=out.parent) as tmp:
        endpoint = f"ipc://{tmp}/data.sock"
        receiver_settings = ReceiverSettings(capture_dir=Path(tmp), data_endpoint=endpoint,
                                             max_message_bytes=256 * 1024 * 1024, overview_grace_s=0.5)
        with FakeDetector(endpoint, control_endpoint=None, rate_fps="max",
                          max_message_bytes=256 * 1024 * 1024) as detector:
            with Receiver(receiver_settings) as receiver:
                detector.run([scene.source(out.stem)])
                summary = receiver.wait_for_series(1, timeout_s=120)[0]
        if summary.accounting["received"] != summary.accounting["frames_expected"]:
            raise SimedError(f"the simulated scan lost frames on loopback: {summary.accounting}")
        with h5py.File(summary.path, "a") as f:
            scene.write_truth(f)
        summary.path.replace(out)
    log.info("wrote %s: %d particles in a %dx%d scan", out, settings.particles, *settings.scan_shape)
    return out
