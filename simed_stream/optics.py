"""Electron optics shared by the simulator, the calibration checks and the phaser."""

from __future__ import annotations

import numpy as np
from ase import units


def electron_wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength in Å, as abTEM computes it.

    abTEM's own `abtem.core.energy.energy2wavelength`, written out with the same constants
    (`ase.units`) so that it is equal to the last bit (tested) without importing abTEM: that
    import costs ~3 s, which every `simed run`, reprocess worker and simulation parent would pay.
    """
    if energy_eV <= 0:
        raise ValueError(f"electron energy must be positive, got {energy_eV} eV")
    return float(units._hplanck * units._c / np.sqrt(energy_eV * (2 * units._me * units._c**2 / units._e + energy_eV))
                 / units._e * 1.0e10)
