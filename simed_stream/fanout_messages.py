"""The phasing fan-out's messages (`fanout.py`): a job (one particle) from the pipeline to a
worker, and its result (or an error) back — encoded, and decoded with every field checked.

A message is a compact JSON header plus raw little-endian float64 arrays; nothing is unpickled
or executed. A decoder takes what ZeroMQ delivered — any bytes, any number of parts — and
returns a typed message or raises `FanoutMessageError` with one line saying why; sizes are
bounded before anything is allocated. The fuzz tests (`tests/test_fuzz.py`) hold them to that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simed_stream.errors import SimedError

MAX_SIDE_PX = 2048
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 3 * MAX_SIDE_PX * MAX_SIDE_PX * 8 + MAX_HEADER_BYTES
MAX_INDEX = 1_000_000  # particles per batch
MAX_PRTF = 4096  # resolution rings
#: what a worker sends back per particle, as arrays (the rest travels in the JSON header)
IMAGES = ("sigma_v", "best", "spread")
SCALARS = ("r_free", "r_work", "resolution_A", "searches")


class FanoutMessageError(SimedError, ValueError):
    """A fan-out message that does not follow this module's format."""


@dataclass(frozen=True)
class Job:
    batch: str
    index: int
    geometry: dict[str, Any]  # `Geometry.__dict__`
    settings: dict[str, Any]  # `EngineSettings.to_json()`
    diffraction: np.ndarray
    image_lr: np.ndarray


@dataclass(frozen=True)
class Result:
    batch: str
    index: int
    flag: str | None = None  # the engine flagged the particle: why
    error: str | None = None  # the worker failed on the job: why
    scalars: dict[str, float] | None = None
    prtf: list[float] | None = None
    images: tuple[np.ndarray, ...] = ()  # IMAGES, when neither flagged nor failed


def _array_part(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def encode_job(batch: str, index: int, geometry: dict, settings: dict, diffraction, image_lr) -> list[bytes]:
    header = {"batch": batch, "index": index, "geometry": geometry, "settings": settings,
              "diffraction_shape": list(np.shape(diffraction)), "image_lr_shape": list(np.shape(image_lr))}
    return [json.dumps(header).encode(), _array_part(diffraction), _array_part(image_lr)]


def encode_result(batch: str, index: int, flag: str | None, scalars: dict[str, float] | None = None,
                  prtf: list[float] | None = None, images: tuple[np.ndarray, ...] = ()) -> list[bytes]:
    header: dict[str, Any] = {"batch": batch, "index": index, "flag": flag}
    if flag is None:
        header.update(scalars or {}, prtf=prtf, shape=list(images[0].shape))
    return [json.dumps(header).encode(), *(_array_part(image) for image in images)]


def encode_error(batch: str | None, index: int | None, message: str) -> list[bytes]:
    return [json.dumps({"batch": batch, "index": index, "error": message[:500]}).encode()]


def read_header(parts: list) -> dict[str, Any]:
    """Part 0 as a JSON object with a batch id and an index, or FanoutMessageError."""
    if not parts:
        raise FanoutMessageError("empty message")
    if len(parts[0]) > MAX_HEADER_BYTES:
        raise FanoutMessageError(f"header of {len(parts[0])} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(parts[0]).decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise FanoutMessageError(f"header is not JSON ({error.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise FanoutMessageError("header is not a JSON object")
    batch, index = header.get("batch"), header.get("index")
    if not isinstance(batch, str) or not 0 < len(batch) <= 64:
        raise FanoutMessageError("batch must be a string of 1 to 64 characters")
    if not _is_int(index) or not 0 <= index < MAX_INDEX:
        raise FanoutMessageError(f"index must be an integer in 0..{MAX_INDEX - 1}")
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FanoutMessageError(f"{what} must be a number")
    return float(value)


def read_array(part, shape: Any, what: str) -> np.ndarray:
    """A float64 image of `shape` (a list of two sides in 1..MAX_SIDE_PX) from `part`."""
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(_is_int(side) and 0 < side <= MAX_SIDE_PX for side in shape)):
        raise FanoutMessageError(f"{what} shape must be two integers in 1..{MAX_SIDE_PX}")
    if len(part) != shape[0] * shape[1] * 8:
        raise FanoutMessageError(f"{what} part has {len(part)} bytes, expected {shape[0] * shape[1] * 8}")
    return np.frombuffer(part, dtype="<f8").reshape(shape)


def decode_job(parts: list) -> Job:
    header = read_header(parts)
    if len(parts) != 3:
        raise FanoutMessageError(f"a job has 3 parts, got {len(parts)}")
    for key in ("geometry", "settings"):
        if not isinstance(header.get(key), dict):
            raise FanoutMessageError(f"{key} must be a JSON object")
    return Job(header["batch"], header["index"], header["geometry"], header["settings"],
               read_array(parts[1], header.get("diffraction_shape"), "diffraction"),
               read_array(parts[2], header.get("image_lr_shape"), "image_lr"))


def decode_result(parts: list) -> Result:
    header = read_header(parts)
    batch, index = header["batch"], header["index"]
    if "error" in header:
        if not isinstance(header["error"], str) or len(parts) != 1:
            raise FanoutMessageError("an error result is one part with an error string")
        return Result(batch, index, error=header["error"][:500])
    flag = header.get("flag")
    if flag is not None:
        if not isinstance(flag, str) or len(parts) != 1:
            raise FanoutMessageError("a flagged result is one part with a flag string")
        return Result(batch, index, flag=flag[:1000])
    if len(parts) != 1 + len(IMAGES):
        raise FanoutMessageError(f"a result has {1 + len(IMAGES)} parts, got {len(parts)}")
    scalars = {name: _number(header.get(name), name) for name in SCALARS}
    prtf = header.get("prtf")
    if not isinstance(prtf, list) or len(prtf) > MAX_PRTF:
        raise FanoutMessageError(f"prtf must be a list of at most {MAX_PRTF} numbers")
    prtf = [_number(value, "prtf") for value in prtf]
    if not all(math.isfinite(value) for value in prtf):
        raise FanoutMessageError("prtf must be finite")
    images = tuple(read_array(part, header.get("shape"), name) for part, name in zip(parts[1:], IMAGES))
    return Result(batch, index, scalars=scalars, prtf=prtf, images=images)
