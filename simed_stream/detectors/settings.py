"""Where frames come from: the source (one key: `simed`, `dectris`, `merlin`, `serval`), its
endpoint, and for detectors whose frames carry no scan position the scan they belong to, the
optics the particle chain needs and where the microscope's overview image comes from.

`simed receive`, `simed run` and `simed replay` share these keys (flags and YAML alike).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import Field, field_validator, model_validator

from simed_stream.config import Settings, cli
from simed_stream.links import LinkSecurity

SOURCES = ("simed", "dectris", "merlin", "serval")
Source = Literal["simed", "dectris", "merlin", "serval"]
#: each source's endpoint when none is given (DECTRIS: stream v2's port; stream v1 uses 9999)
DEFAULT_ENDPOINTS = {"simed": "tcp://127.0.0.1:31001", "dectris": "tcp://127.0.0.1:31001",
                     "merlin": "tcp://127.0.0.1:6342", "serval": "tcp://127.0.0.1:8088"}
DEFAULT_OVERVIEW_ENDPOINT = "tcp://127.0.0.1:31003"
Side = Annotated[int, Field(ge=1, le=65536)]


def pair_from_text(value):
    """'64x64' (a flag) as well as [64, 64] (YAML)."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"expected HxW such as 64x64, got {value!r}") from None
    return value


def affine_from_text(value):
    """'a,b,c,d,e,f' (a flag), six numbers or a 2×3 nested list (YAML) → six numbers."""
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(r, (list, tuple)) for r in value):
        value = [*value[0], *value[1]]
    return value


class ScanSync(Settings):
    """The scan the detector's frames belong to, for detectors that send no scan positions: frame
    k of a series is placed by this geometry, never by guessing."""

    shape: Optional[tuple[Side, Side]] = Field(None, description="scan positions HxW; required for the "
                                               "dectris, merlin and serval sources",
                                               json_schema_extra=cli("--scan-shape"))
    frames_per_position: int = Field(1, ge=1, le=1_000_000, description="detector frames per scan position")
    flyback_frames: int = Field(0, ge=0, le=1_000_000, description="frames recorded at the end of each line "
                                "while the beam flies back; dropped (counted as skipped)")
    pattern: Literal["raster", "serpentine"] = Field("raster", description="raster: every line left to right; "
                                                     "serpentine: odd lines right to left",
                                                     json_schema_extra=cli("--scan-pattern"))
    start_frame: int = Field(0, ge=0, le=10**9, description="detector frames before the scan's first position; "
                             "dropped (counted as skipped)")
    dwell_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="seconds per position, for the record")
    step_A: float = Field(0.0, ge=0, allow_inf_nan=False, description="scan step (Å), for the record")
    rotation_deg: float = Field(0.0, allow_inf_nan=False, description="scan rotation, for the record")

    @field_validator("shape", mode="before")
    @classmethod
    def _shape_from_text(cls, value):
        return pair_from_text(value)

    @model_validator(mode="after")
    def _bounded(self) -> "ScanSync":
        if self.shape is not None and self.shape[0] * self.shape[1] > 10_000_000:
            raise ValueError(f"scan.shape {list(self.shape)} has more than 10 000 000 positions")
        if self.shape is not None and self.shape[0] * self.shape[1] * self.frames_per_position > 50_000_000:
            raise ValueError("scan.shape × frames_per_position is more than 50 000 000 frames")
        return self


class OpticsSettings(Settings):
    """What the detector does not say and the particle chain needs (`optics` of series_start)."""

    energy_eV: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="beam energy (eV)")
    mrad_per_px: Optional[float] = Field(None, gt=0, allow_inf_nan=False,
                                         description="diffraction sampling (mrad per detector pixel)")
    camera_length_mm: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="camera length (mm)")
    convergence_mrad: Optional[float] = Field(None, ge=0, allow_inf_nan=False,
                                              description="convergence semi-angle (mrad)")

    def header(self) -> dict:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class OverviewSettings(Settings):
    """The microscope's overview image: an MRC or TIFF file dropped into `dir`, or sent with
    `simed overview FILE` to `endpoint`."""

    dir: Optional[Path] = Field(None, description="folder watched for overview images (.mrc, .tif)",
                                json_schema_extra=cli("--overview-dir"))
    endpoint: Optional[str] = Field(None, description="where `simed overview` sends an overview (bound here, "
                                    f"loopback; e.g. {DEFAULT_OVERVIEW_ENDPOINT})",
                                    json_schema_extra=cli("--overview-endpoint"))
    pixel_size_A: Optional[float] = Field(None, gt=0, allow_inf_nan=False,
                                          description="overview pixel size (Å); default: the file's header",
                                          json_schema_extra=cli("--overview-pixel-A"))
    affine: Optional[tuple[float, float, float, float, float, float]] = Field(
        None, description="scan (y, x, 1) → overview (row, col), 2×3 row by row: 'a,b,c,d,e,f'; default: the "
        "file's header", json_schema_extra=cli("--overview-affine"))
    acquired: Literal["before", "after"] = Field("after", description="taken before or after the scan",
                                                 json_schema_extra=cli("--overview-acquired"))

    @field_validator("affine", mode="before")
    @classmethod
    def _affine_from_text(cls, value):
        return affine_from_text(value)

    def affine_matrix(self) -> np.ndarray | None:
        return None if self.affine is None else np.asarray(self.affine, np.float64).reshape(2, 3)


class DectrisOptions(Settings):
    channel: Optional[str] = Field(None, description="stream v2: the image channel to take (default: the "
                                   "first of the start message's `channels`)", json_schema_extra=cli("--channel"))


class ServalOptions(Settings):
    byte_order: Literal["big", "little"] = Field("big", description="byte order of Serval's jsonimage pixels "
                                                 "(installations differ)", json_schema_extra=cli("--byte-order"))


class SourceSettings(Settings):
    """The receiver's input: a base of `ReceiverSettings` and `LiveSettings`."""

    source: Source = Field("simed", description="the detector's stream: simed (simed-stream/1), dectris "
                           "(stream v1 or v2), merlin (Quantum Detectors MPX), serval (ASI jsonimage)")
    data_endpoint: str = Field("", description="the detector's data endpoint; default per source: simed and "
                               "dectris tcp://127.0.0.1:31001, merlin :6342, serval :8088 (tcp://listen@HOST:PORT: "
                               "wait for Serval to connect)", json_schema_extra=cli("--data-endpoint", "--data"))
    scan: ScanSync = ScanSync()
    pixel_mask: Optional[Path] = Field(None, description="bad pixels (.npy, .tif, .mrc; nonzero = bad), for "
                                       "detectors whose stream sends no mask (Merlin, Serval)")
    optics: OpticsSettings = OpticsSettings()
    overview: OverviewSettings = OverviewSettings()
    dectris: DectrisOptions = DectrisOptions()
    serval: ServalOptions = ServalOptions()
    security: LinkSecurity = LinkSecurity()  # keys of the ZeroMQ links (docs/security.md)

    @model_validator(mode="before")
    @classmethod
    def _endpoint_of_source(cls, data):
        field = cls.model_fields.get("data_endpoint")
        if isinstance(data, dict) and not data.get("data_endpoint") and field is not None and field.default == "":
            source = data.get("source", "simed")
            data = {**data, "data_endpoint": DEFAULT_ENDPOINTS.get(source, DEFAULT_ENDPOINTS["simed"])}
        return data

    @model_validator(mode="after")
    def _scan_for_positionless_sources(self) -> "SourceSettings":
        if self.source != "simed" and self.scan.shape is None:
            raise ValueError(f"source {self.source!r} sends no scan positions: scan.shape (--scan-shape HxW) is "
                             "required, with scan.frames_per_position, flyback_frames, pattern and start_frame "
                             "where they differ from 1, 0, raster and 0")
        return self
