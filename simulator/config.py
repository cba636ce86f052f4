"""Simulation settings: typed configuration, the named presets, and their physical checks.

Units are in the names: Å for lengths, eV for energy, mrad for angles, e/Å² for dose.

Defocus convention (abTEM's): `defocus_A = -C10`, so a positive value is underfocus.
The values here are measured from the centre of the molecule, not from abTEM's reference
plane (the exit plane at the bottom of the potential box); `simulator.physics` converts.
The paper's "-50 Å" and "-1000 Å" are used as they were passed to abTEM, i.e. overfocus.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from simed_stream.config import StrictModel, deep_merge, read_yaml_mapping, validate_config
from simed_stream.errors import ConfigError
from simed_stream.optics import electron_wavelength_A


class StructureOptions(StrictModel):
    chain: str = Field("A", description="chain identifier to simulate")
    add_hydrogens: bool = Field(True, description="add hydrogens with PDBFixer when the file has none")
    pH: float = Field(7.0, gt=0, lt=14, description="pH for hydrogen placement")


class HighResImage(StrictModel):
    defocus_A: float = Field(-50.0, description="abTEM defocus in Å at the molecule centre (positive = underfocus)")
    Cs_A: float = Field(0.0, description="spherical aberration in Å")
    semiangle_cutoff_mrad: Optional[float] = Field(
        None, gt=0, description="objective aperture in mrad; null = none (the paper's setting)"
    )


class LowResImage(StrictModel):
    defocus_A: float = Field(-1000.0, description="abTEM defocus in Å at the molecule centre (positive = underfocus)")
    defocus_range_A: Optional[tuple[float, float]] = Field(
        None, description="[min, max] in Å: draw each sample's defocus uniformly from this range instead"
    )
    Cs_A: float = Field(0.0, description="spherical aberration in Å")
    cutoff_mrad: float = Field(5.0, gt=0, description="aperture/envelope cutoff in mrad")
    soft_edge_mrad: float = Field(0.5, ge=0, description="width in mrad of the cosine taper inside the cutoff")
    target_snr: float = Field(0.8, gt=0, description="spectral SNR wanted in the SNR band")
    snr_band_A: tuple[float, float] = Field((8.0, 5.0), description="[coarse, fine] resolution band in Å for the SNR")

    @model_validator(mode="after")
    def _check_ranges(self) -> "LowResImage":
        lo_res, hi_res = self.snr_band_A
        if not lo_res > hi_res > 0:
            raise ValueError(f"snr_band_A must be [coarse, fine] with coarse > fine > 0 Å, got {list(self.snr_band_A)}")
        if self.defocus_range_A is not None and not self.defocus_range_A[0] <= self.defocus_range_A[1]:
            raise ValueError(f"defocus_range_A must be [min, max], got {list(self.defocus_range_A)}")
        if self.soft_edge_mrad >= self.cutoff_mrad:
            raise ValueError("soft_edge_mrad must be smaller than cutoff_mrad")
        return self


class SimulationConfig(StrictModel):
    preset: str = Field("custom", description="name of the preset these settings started from")
    energy_eV: float = Field(200e3, gt=0, description="beam energy in eV")
    box_A: float = Field(..., gt=0, description="lateral size of the square potential box in Å")
    gpts: int = Field(..., gt=0, description="grid points across the box")
    slice_thickness_A: float = Field(1.0, gt=0, description="multislice slice thickness in Å")
    margin_A: float = Field(2.0, ge=0, description="clearance in Å kept between atoms and every box face")
    max_angle_mrad: float = Field(20.0, gt=0, description="diffraction pattern extent in mrad")
    parametrization: Literal["lobato", "kirkland", "peng"] = Field("lobato", description="atomic potential parametrisation")
    image_field_A: float = Field(..., gt=0, description="side in Å of the central field stored as images")
    image_size_px: int = Field(..., gt=0, description="pixels across the stored images")
    diffraction_dose_e_per_A2: Optional[float] = Field(
        None, gt=0, description="counting noise on the diffraction at this dose in e/Å²; null = noise-free"
    )
    image_hr: HighResImage = HighResImage()
    image_lr: LowResImage = LowResImage()
    structure: StructureOptions = StructureOptions()

    @property
    def sampling_A(self) -> float:
        return self.box_A / self.gpts

    @property
    def wavelength_A(self) -> float:
        return electron_wavelength_A(self.energy_eV)

    @property
    def image_pixel_A(self) -> float:
        return self.image_field_A / self.image_size_px

    @property
    def image_crop_px(self) -> int:
        """Pixels of the simulation grid that make up the stored image field."""
        return round(self.image_field_A / self.sampling_A)

    @property
    def diffraction_mrad_per_px(self) -> float:
        return self.wavelength_A / self.box_A * 1e3

    @property
    def antialias_cutoff_mrad(self) -> float:
        """abTEM keeps 2/3 of the grid's Nyquist frequency; scattering beyond is cut."""
        return 2.0 / 3.0 / (2.0 * self.sampling_A) * self.wavelength_A * 1e3

    @model_validator(mode="after")
    def _check_geometry(self) -> "SimulationConfig":
        if self.antialias_cutoff_mrad < self.max_angle_mrad:
            needed = math.ceil(3.0 * self.box_A * self.max_angle_mrad * 1e-3 / self.wavelength_A)
            raise ValueError(
                f"gpts={self.gpts} over a {self.box_A:g} Å box keeps scattering only to "
                f"{self.antialias_cutoff_mrad:.1f} mrad (abTEM's 2/3-Nyquist antialiasing), less than "
                f"max_angle_mrad={self.max_angle_mrad:g}; use gpts >= {needed}"
            )
        if self.image_field_A > self.box_A:
            raise ValueError(f"image_field_A={self.image_field_A:g} exceeds box_A={self.box_A:g}")
        crop = self.image_field_A / self.sampling_A
        if abs(crop - round(crop)) > 1e-6 * crop:
            raise ValueError(
                f"image_field_A={self.image_field_A:g} is not a whole number of simulation pixels "
                f"({self.sampling_A:.4f} Å each)"
            )
        if self.image_size_px > self.image_crop_px:
            raise ValueError("image_size_px may not exceed the simulation pixels across image_field_A (no upsampling)")
        return self


def cache_root() -> Path:
    """Folder of the caches that can be rebuilt (structures, FFT plans): `$SIMED_CACHE_DIR`."""
    return Path(os.environ.get("SIMED_CACHE_DIR", Path.home() / ".cache" / "simed"))


PRESETS: dict[str, dict[str, Any]] = {
    # The reference code's geometry: 70 Å box on 256 points (0.2734 Å/px), 256² images.
    "paper": dict(preset="paper", box_A=70.0, gpts=256, image_field_A=70.0, image_size_px=256),
    # A 140 Å box doubles the diffraction sampling (0.179 mrad/px, ~225 px across ±20 mrad),
    # which quadruples the oversampling phasing relies on; images keep the central 70 Å at 128².
    "cpu": dict(preset="cpu", box_A=140.0, gpts=384, image_field_A=70.0, image_size_px=128),
}


def load_simulation_config(
    preset: str | None = None, config_path: str | None = None, overrides: dict[str, Any] | None = None
) -> SimulationConfig:
    """Preset values, then the YAML file's, then explicit overrides, validated together."""
    data: dict[str, Any] = {}
    file_data = read_yaml_mapping(config_path) if config_path else {}
    name = preset or file_data.get("preset")
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        data = dict(PRESETS[name])
    data = deep_merge(data, file_data)
    if preset is not None:
        data["preset"] = preset
    data = deep_merge(data, overrides or {})
    if "box_A" not in data:
        raise ConfigError("no preset given and the configuration does not set box_A; use --preset paper or cpu")
    return validate_config(SimulationConfig, data, config_path or f"preset {name}")
