"""A live 2D particle stack that RELION and cryoSPARC can read while it grows.

Each batch becomes its own `particles_NNNN.mrcs` (MRC mode 2, an image stack: ispg 0, nz = n) and
`particles.star` is rewritten whole after it. Both are written under a temporary name, fsynced and
`os.replace`d, so a reader polling the directory sees the previous complete state or the next one,
never a half-written file, and no `rlnImageName` ever points at a stack that is not fully on disk.
A crash between the two replaces leaves an unreferenced `.mrcs`, which later batches never reuse.

Image names are relative to the output directory (`000001@particles_0000.mrcs`): RELION resolves
them against its working directory, so run RELION from here or import the STAR into a project.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from simed_stream.errors import SimedError
from simed_stream.files import check_writable, replace_atomically

STAR_NAME = "particles.star"
_STACK = re.compile(r"particles_(\d+)\.mrcs")
_STRINGS = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName"]  # never parse '0007' as 7


@dataclass(frozen=True)
class Optics:
    pixel_size_A: float
    image_size_px: int
    voltage_kV: float = 200.0
    spherical_aberration_mm: float = 0.0
    amplitude_contrast: float = 0.1
    optics_group_name: str = "opticsGroup1"
    #: pixel size of the overview that `x_px`/`y_px` refer to; None: the same as the images'
    micrograph_pixel_size_A: float | None = None

    def table(self) -> pd.DataFrame:
        micrograph_A = self.pixel_size_A if self.micrograph_pixel_size_A is None else self.micrograph_pixel_size_A
        return pd.DataFrame([{
            "rlnOpticsGroupName": self.optics_group_name, "rlnOpticsGroup": 1,
            "rlnMicrographOriginalPixelSize": float(micrograph_A), "rlnVoltage": float(self.voltage_kV),
            "rlnSphericalAberration": float(self.spherical_aberration_mm),
            "rlnAmplitudeContrast": float(self.amplitude_contrast), "rlnImagePixelSize": float(self.pixel_size_A),
            "rlnImageSize": int(self.image_size_px), "rlnImageDimensionality": 2}])


def column_name(key: str) -> str:
    """'fourier_r' → 'simedFourierR'; keys already in RELION form ('rlnAngleRot') are kept."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", key):
        raise ValueError(f"particle column {key!r}: use letters, digits and '_' only")
    if key.startswith("rln"):
        return key
    return "simed" + "".join(part[:1].upper() + part[1:] for part in key.split("_") if part)


class StackWriter:
    """Writes batches into `out_dir`; one writer per directory, all calls from one thread."""

    def __init__(self, out_dir: str | Path, optics: Optics, append: bool = False):
        self.out_dir = Path(out_dir)
        self.optics = optics
        self.star_path = self.out_dir / STAR_NAME
        check_writable(self.out_dir, "the particle stack to")  # now, at the microscope, not after a batch
        self._particles: pd.DataFrame | None = None
        if self.star_path.exists():
            if not append:
                raise SimedError(f"{self.star_path} already exists; append to it or choose another output directory")
            self._particles = self._read_existing()
        # number after every stack named in the STAR or lying on disk (an orphan of a crash included)
        named = [] if self._particles is None else [n.split("@")[-1] for n in self._particles["rlnImageName"]]
        numbers = [int(m.group(1)) for m in map(_STACK.fullmatch, named + os.listdir(self.out_dir)) if m]
        self._batch = max(numbers, default=-1) + 1
        self._closed = False

    def _read_existing(self) -> pd.DataFrame:
        blocks = starfile.read(self.star_path, always_dict=True, parse_as_string=_STRINGS)
        if "particles" not in blocks or "optics" not in blocks:
            raise SimedError(f"{self.star_path} has no data_optics and data_particles blocks; not a stack to append to")
        old = blocks["optics"].iloc[0]
        new = self.optics.table().iloc[0]
        for label in ("rlnImagePixelSize", "rlnImageSize"):
            if not np.isclose(float(old[label]), float(new[label])):
                raise SimedError(f"cannot append to {self.star_path}: its {label} is {old[label]}, not {new[label]}")
        return blocks["particles"]

    @property
    def count(self) -> int:
        return 0 if self._particles is None else len(self._particles)

    def write_batch(self, images: np.ndarray, rows: list[dict]) -> list[str]:
        """Write (n, S, S) images as the next stack, with one row each: 'micrograph', 'x_px', 'y_px'
        (overview pixels) and extra columns (`column_name`); the same keys in every row and batch,
        because a STAR file has no portable missing value. Returns the images' `rlnImageName`s."""
        if self._closed:
            raise ValueError("write_batch on a closed StackWriter")
        images = np.asarray(images, dtype=np.float32)
        size = self.optics.image_size_px
        if images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(f"images have shape {images.shape}; expected (n, {size}, {size})")
        if len(rows) != len(images):
            raise ValueError(f"{len(images)} images but {len(rows)} rows")
        if not rows:
            return []
        keys = set(rows[0])
        if any(set(row) != keys for row in rows) or not {"micrograph", "x_px", "y_px"} <= keys:
            raise ValueError("every row needs the same keys, including 'micrograph', 'x_px' and 'y_px'")
        stack = f"particles_{self._batch:04d}.mrcs"
        names = [f"{i:06d}@{stack}" for i in range(1, len(images) + 1)]
        extras = [key for key in rows[0] if key not in ("micrograph", "x_px", "y_px")]
        table = pd.DataFrame({
            "rlnImageName": names, "rlnMicrographName": [str(row["micrograph"]) for row in rows],
            "rlnCoordinateX": [float(row["x_px"]) for row in rows],
            "rlnCoordinateY": [float(row["y_px"]) for row in rows], "rlnOpticsGroup": 1,
            **{column_name(key): [row[key] for row in rows] for key in extras}})
        if self._particles is not None and list(table.columns) != list(self._particles.columns):
            raise ValueError(f"batch columns {list(table.columns)} differ from the stack's "
                             f"{list(self._particles.columns)}")
        self._write_mrcs(images, stack)
        particles = table if self._particles is None else pd.concat([self._particles, table], ignore_index=True)
        self._write_star(particles)
        self._particles, self._batch = particles, self._batch + 1
        return names

    def _write_mrcs(self, images: np.ndarray, name: str) -> None:
        def write(temporary: Path) -> None:
            with mrcfile.new(temporary, overwrite=True) as mrc:
                mrc.set_data(images)
                mrc.set_image_stack()  # ispg 0, mz 1, nz = n: a stack of 2D images, not a volume
                mrc.voxel_size = self.optics.pixel_size_A
            report = io.StringIO()
            if not mrcfile.validate(temporary, print_file=report):
                raise RuntimeError(f"mrcfile wrote an invalid stack {name}: {report.getvalue()}")

        replace_atomically(self.out_dir / name, write)

    def _write_star(self, particles: pd.DataFrame) -> None:
        # both blocks as loop_ (RELION 3.1+); NaN as 'nan', which RELION's sscanf and pandas both read
        replace_atomically(self.star_path, lambda temporary: starfile.write(
            {"optics": self.optics.table(), "particles": particles}, temporary, overwrite=True, float_format="%.9g",
            na_rep="nan"))

    def close(self) -> None:
        """Every batch is complete on disk once written; closing only stops further writes."""
        self._closed = True

    def __enter__(self) -> "StackWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_stack(out_dir: str | Path) -> tuple[dict, np.ndarray]:
    """The STAR blocks and every image in STAR order, opened strictly (`permissive=False`)."""
    out_dir = Path(out_dir)
    blocks = starfile.read(out_dir / STAR_NAME, always_dict=True, parse_as_string=_STRINGS)
    size = int(blocks["optics"]["rlnImageSize"].iloc[0])
    stacks: dict[str, np.ndarray] = {}
    images = []
    for name in blocks["particles"]["rlnImageName"]:
        index, stack = name.split("@", 1)
        if stack not in stacks:
            with mrcfile.open(out_dir / stack, permissive=False) as mrc:
                stacks[stack] = np.array(mrc.data).reshape(-1, size, size)
        images.append(stacks[stack][int(index) - 1])  # RELION counts from 1
    return blocks, np.stack(images) if images else np.zeros((0, size, size), np.float32)
