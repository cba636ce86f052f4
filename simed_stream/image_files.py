"""Images as files: the microscope's overview (MRC or TIFF) and a detector's bad-pixel mask.

The overview, MRC (mrcfile) or TIFF (tifffile).

Read: the image as float32, its pixel size when the header has one (MRC voxel size; TIFF: an
ImageDescription JSON with `pixel_size_A`, or the resolution tags in cm/inch) and the scan →
overview affine when the file carries it (TIFF ImageDescription JSON `affine_scan_to_overview`).
The run's settings (`overview.pixel_size_A`, `overview.affine`) take precedence over the file.
Written (the detector simulators do): MRC with its voxel size, or TIFF with that JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simed_stream.errors import SimedError

SUFFIXES = (".mrc", ".tif", ".tiff")
MAX_OVERVIEW_PX = 65536 * 65536 // 16  # 1 GiB of float32
MAX_SIDE_PX = 65536


@dataclass
class OverviewFile:
    image: np.ndarray  # (H, W) float32
    pixel_size_A: float | None
    affine: np.ndarray | None  # 2×3
    name: str


def read_overview(path: str | Path) -> OverviewFile:
    """Raises SimedError with the reason when the file is no usable 2-D overview."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SimedError(f"{path.name}: an overview must be {', '.join(SUFFIXES)}")
    try:
        image, pixel, affine = _read_mrc(path) if suffix == ".mrc" else _read_tiff(path)
    except SimedError:
        raise
    except Exception as error:  # the readers raise ValueError, OSError, struct errors, ...
        raise SimedError(f"{path.name} is not a readable {suffix[1:].upper()} image: {error}") from None
    image = np.squeeze(image)
    if image.ndim != 2 or not all(0 < side <= MAX_SIDE_PX for side in image.shape) \
            or image.size > MAX_OVERVIEW_PX:
        raise SimedError(f"{path.name}: an overview must be one 2-D image, got shape {list(image.shape)}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise SimedError(f"{path.name}: the overview has NaN or infinite pixels")
    return OverviewFile(image, pixel, affine, path.name)


def _read_mrc(path: Path):
    import mrcfile

    with mrcfile.open(path, permissive=False) as mrc:
        voxel = float(mrc.voxel_size.x)
        return np.array(mrc.data), (voxel if voxel > 0 else None), None


def _read_tiff(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        image = page.asarray()
        description = _json(page.description)
        pixel = description.get("pixel_size_A") or _resolution_A(page)
        affine = description.get("affine_scan_to_overview")
    matrix = None
    if affine is not None:
        matrix = np.asarray(affine, np.float64)
        if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
            raise SimedError(f"{path.name}: affine_scan_to_overview in its description is not a 2×3 matrix")
    return image, (float(pixel) if pixel else None), matrix


def _json(text) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _resolution_A(page) -> float | None:
    """TIFF resolution tags → Å per pixel (unit 2: inch, 3: cm); None when absent or unitless."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not numerator or unit not in (2, 3):
        return None
    per_unit = numerator / denominator
    return (2.54e8 if unit == 2 else 1e8) / per_unit


def write_overview(path: str | Path, image: np.ndarray, pixel_size_A: float,
                   affine: np.ndarray | None = None) -> Path:
    """MRC (voxel size) or TIFF (description JSON with the pixel size and affine), written under
    a hidden temporary name and renamed, as a careful camera program does."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.part")
    image = np.asarray(image, np.float32)
    if path.suffix.lower() == ".mrc":
        import mrcfile

        with mrcfile.new(temporary, overwrite=True) as mrc:
            mrc.set_data(image)
            mrc.voxel_size = float(pixel_size_A)
    else:
        import tifffile

        description = {"pixel_size_A": float(pixel_size_A)}
        if affine is not None:
            description["affine_scan_to_overview"] = np.asarray(affine, float).tolist()
        tifffile.imwrite(temporary, image, description=json.dumps(description), metadata=None)
    os.replace(temporary, path)
    return path


def read_pixel_mask(path: str | Path) -> np.ndarray:
    """A bad-pixel mask (.npy, .tif, .mrc; nonzero = bad) as a (h, w) u1 array; SimedError if unusable."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            mask = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".mrc":
            import mrcfile

            with mrcfile.open(path) as mrc:
                mask = np.array(mrc.data)
        else:
            import tifffile

            mask = tifffile.imread(path)
    except Exception as error:  # numpy, tifffile and mrcfile raise ValueError, OSError, ...
        raise SimedError(f"pixel mask {path}: not readable ({error})") from None
    mask = np.squeeze(mask)
    if mask.ndim != 2 or not all(0 < side <= MAX_SIDE_PX for side in mask.shape):
        raise SimedError(f"pixel mask {path}: one 2-D image expected, got shape {list(mask.shape)}")
    return (mask != 0).astype(np.uint8)

