"""FFTW plans that are the same in every process on a machine, so that a seed gives the same arrays.

abTEM plans its FFTs with `FFTW_MEASURE`: FFTW times several algorithms for each transform and
keeps the fastest. Timings vary between processes (other load, caches), so two processes, or two
workers of one run, can pick different algorithms for the same transform. These round
differently: one 384² transform differs by ~1e-7 relative, a whole sample by ~1e-6.

Here the plans are measured once per machine, library versions and grid, and kept as FFTW
wisdom in `$SIMED_CACHE_DIR/fftw/`. Every process (each worker, every later run) forgets any
wisdom it holds, imports that file, and from then on lets abTEM plan with `FFTW_ESTIMATE`: a
transform found in the wisdom gets the measured plan (at full speed), and one that is not gets a
plan chosen by FFTW's fixed heuristics, not by timing. No process ever times a transform again,
so every process on the machine builds the same plans.

What is promised: identical arrays for the same arguments on the same machine (same CPU type),
with the same library versions and the same plan file. Not promised: identical arrays across CPU
types (FFTW uses other SIMD code) or after the plan file is deleted (a new measurement may choose
other plans; the arrays then differ in the last bits, and a noisy count by one in a few pixels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from simulator.config import SimulationConfig, cache_root
from simulator.structure import PreparedStructure

log = logging.getLogger(__name__)

MEASURED_WITH = "FFTW_MEASURE"

# Two atoms of two elements: a sample that passes through every transform `simulate_orientation`
# makes (potential slices, multislice, diffraction, CTF images), in a box a few slices high.
_PROBE = PreparedStructure(
    name="fft-plan-probe", atomic_numbers=np.array([6, 1], dtype=np.int32),
    positions_A=np.array([[0.0, 0.0, -0.55], [0.0, 0.0, 0.55]]), source_sha256="", chain="A", hydrogens_added=False,
)


def default_plan_dir() -> Path:
    return cache_root() / "fftw"


def plan_identity(config: SimulationConfig) -> dict:
    """Everything FFTW's choice of plans for this simulation depends on."""
    import abtem
    import pyfftw

    return {
        "fftw": pyfftw.fftw_version, "pyfftw": version("pyfftw"), "abtem": version("abtem"),
        "machine": platform.machine(), "cpu": _cpu_identity(), "gpts": config.gpts,
        "precision": abtem.config.get("precision"), "threads": abtem.config.get("fftw.threads"),
        "measured_with": MEASURED_WITH,
    }


def plan_file(config: SimulationConfig, plan_dir: Path | None = None) -> Path:
    identity = plan_identity(config)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return (default_plan_dir() if plan_dir is None else Path(plan_dir)) / f"plans-{config.gpts}-{digest}.json"


def use_shared_plans(config: SimulationConfig, plan_dir: Path | None = None) -> Path | None:
    """Make this process plan every FFT of `config` as every other process on this machine does.

    Call once per process after `configure_abtem`, before simulating. Imports the machine's plan
    file, or measures the plans and publishes them when there is none yet: two processes that
    measure at once both publish atomically and the first file wins, so both end with its plans.
    Returns the plan file, or None when it can be neither read nor written (then this process
    keeps its own measurement and reproducibility across processes is not promised).
    """
    import abtem

    path = plan_file(config, plan_dir)
    identity = plan_identity(config)
    wisdom = _read(path, identity)
    if wisdom is None:
        measured = _measure(config)
        try:
            wisdom = _publish(path, identity, measured)
        except OSError as error:
            log.warning("cannot keep FFT plans in %s (%s): this process uses its own, so arrays may differ "
                        "from other processes' in the last bits", path.parent, error)
            path, wisdom = None, measured
    _install(wisdom)
    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"})  # never time a transform again
    return path


def _measure(config: SimulationConfig) -> tuple[bytes, ...]:
    """Wisdom for every transform of one sample of `config`, measured from scratch."""
    import abtem
    import pyfftw

    from simulator.physics import simulate_orientation

    pyfftw.forget_wisdom()
    with abtem.config.set({"fftw.planning_effort": MEASURED_WITH}):
        simulate_orientation(_PROBE, np.array([1.0, 0.0, 0.0, 0.0]), config, config.image_lr.defocus_A,
                             np.random.default_rng(0))
    return pyfftw.export_wisdom()


def _install(wisdom: tuple[bytes, ...]) -> None:
    """This process's wisdom becomes exactly `wisdom` (also in the process that measured it)."""
    import pyfftw

    pyfftw.forget_wisdom()
    if not all(pyfftw.import_wisdom(wisdom)):
        raise RuntimeError("FFTW refused its own exported wisdom")


def _read(path: Path, identity: dict) -> tuple[bytes, ...] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable FFT plan file %s (%s)", path, error)
        return None
    if data.get("identity") != identity or len(data.get("wisdom", ())) != 3:
        log.warning("ignoring FFT plan file %s: it was made for %s", path, data.get("identity"))
        return None
    return tuple(text.encode("ascii") for text in data["wisdom"])


def _publish(path: Path, identity: dict, wisdom: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Write `wisdom` to `path` unless another process did first; returns the wisdom in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"identity": identity, "wisdom": [w.decode("ascii") for w in wisdom]}, indent=1)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists: the first publisher wins
            return wisdom
        except FileExistsError:
            published = _read(path, identity)
            if published is not None:
                return published
            os.replace(tmp, path)  # the existing file is unusable: ours replaces it
            return wisdom
    finally:
        Path(tmp).unlink(missing_ok=True)


def _cpu_identity() -> str:
    """CPU model and instruction-set flags (FFTW's codelets depend on the SIMD available)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:
            break  # the first processor is enough
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16] + " " + fields.get(
        "model name", platform.processor() or "unknown")
