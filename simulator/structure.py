"""Read one protein chain from a PDB or mmCIF file and prepare it for simulation.

Preparation follows the paper: model 1, one chain, protein residues only (waters, ligands and
other polymers removed; alternate conformations reduced to the first), nonstandard amino acids
replaced by their standard equivalents and hydrogens added at pH 7 with PDBFixer when the file
has none. Prepared structures are cached as plain arrays (no pickles) keyed by the file's
content, so a rerun does not repeat PDBFixer.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simed_stream.errors import StructureError
from simulator.config import StructureOptions, cache_root

log = logging.getLogger(__name__)

# Bump when preparation changes, so stale cache entries are not reused.
PREPARATION_VERSION = 2


@dataclass(frozen=True)
class PreparedStructure:
    """Atoms of one protein chain, centred on its centre of mass."""

    name: str
    atomic_numbers: np.ndarray  # (n,) int32
    positions_A: np.ndarray  # (n, 3) float64, centre of mass at the origin
    source_sha256: str
    chain: str
    hydrogens_added: bool

    @property
    def radius_A(self) -> float:
        """Largest distance of an atom from the centre of mass: rotation invariant."""
        return float(np.sqrt((self.positions_A**2).sum(axis=1).max()))

    @property
    def mass_kDa(self) -> float:
        return float(_atomic_masses()[self.atomic_numbers].sum() / 1000.0)


def default_cache_dir() -> Path:
    return cache_root() / "structures"


def load_structure(path: str | Path, options: StructureOptions = StructureOptions(),
                   cache_dir: Path | None = None) -> PreparedStructure:
    """Prepared chain from `path`, taken from the cache when this file was prepared before."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise StructureError(f"cannot read structure file {path}: {error.strerror}") from None
    if not raw.strip():
        raise StructureError(f"structure file {path} is empty")
    sha = hashlib.sha256(raw).hexdigest()
    key = hashlib.sha256(f"{sha}|{options.model_dump_json()}|v{PREPARATION_VERSION}".encode()).hexdigest()[:20]
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cached = cache_dir / f"{path.stem}-{key}.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as data:
            return PreparedStructure(
                name=path.stem, atomic_numbers=data["atomic_numbers"], positions_A=data["positions_A"],
                source_sha256=sha, chain=options.chain, hydrogens_added=bool(data["hydrogens_added"]),
            )
    numbers, positions, added = _prepare(path, options)
    masses = _atomic_masses()[numbers]
    positions = positions - (masses[:, None] * positions).sum(axis=0) / masses.sum()
    structure = PreparedStructure(path.stem, numbers, positions, sha, options.chain, added)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, atomic_numbers=numbers, positions_A=positions, hydrogens_added=added)
        os.replace(tmp, cached)
    except OSError as error:  # a read-only cache only costs time
        log.warning("could not cache prepared structure in %s: %s", cache_dir, error)
    return structure


def _prepare(path: Path, options: StructureOptions) -> tuple[np.ndarray, np.ndarray, bool]:
    import gemmi

    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as error:
        raise StructureError(f"{path} is not a readable PDB or mmCIF file: {error}") from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise StructureError(f"{path} holds no atoms")
    structure.setup_entities()
    while len(structure) > 1:  # NMR ensembles: keep model 1
        del structure[len(structure) - 1]
    structure.remove_alternative_conformations()
    structure.remove_ligands_and_waters()
    structure.remove_empty_chains()
    model = structure[0]
    chains = [chain.name for chain in model]
    if options.chain not in chains:
        raise StructureError(
            f"{path} has no polymer chain {options.chain!r} in model 1; chains present: {', '.join(chains) or 'none'}"
        )
    for name in chains:
        if name != options.chain:
            model.remove_chain(name)
    chain = model[options.chain]
    polymer_type = chain.get_polymer().check_polymer_type()
    if polymer_type not in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD):
        raise StructureError(
            f"chain {options.chain} of {path} is not a protein (polymer type {polymer_type.name}); "
            "only protein chains can be simulated"
        )
    has_hydrogens = any(atom.is_hydrogen() for residue in chain for atom in residue)
    if has_hydrogens or not options.add_hydrogens:
        return _atoms_from_gemmi(chain) + (False,)
    return _add_hydrogens(structure, options.pH, path) + (True,)


def _atoms_from_gemmi(chain) -> tuple[np.ndarray, np.ndarray]:
    numbers = np.array([atom.element.atomic_number for residue in chain for atom in residue], dtype=np.int32)
    positions = np.array([atom.pos.tolist() for residue in chain for atom in residue], dtype=np.float64)
    return numbers, positions


def _add_hydrogens(structure, pH: float, path: Path) -> tuple[np.ndarray, np.ndarray]:
    from openmm import unit
    from pdbfixer import PDBFixer

    fixer = PDBFixer(pdbfile=io.StringIO(structure.make_pdb_string()))
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    before = {residue.name for residue in fixer.topology.residues()}
    fixer.removeHeterogens(keepWater=False)
    removed = before - {residue.name for residue in fixer.topology.residues()}
    if removed:
        log.warning("%s: removed residues without a standard equivalent: %s", path.name, ", ".join(sorted(removed)))
    # Hydrogens need complete residues: rebuild missing side-chain atoms, never missing loops.
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    if fixer.missingAtoms:
        log.warning("%s: rebuilding missing atoms in %d residues", path.name, len(fixer.missingAtoms))
    try:
        fixer.addMissingAtoms()
        fixer.addMissingHydrogens(pH)
    except Exception as error:  # PDBFixer raises bare Exceptions for unknown templates
        raise StructureError(f"PDBFixer could not add hydrogens to {path}: {error}") from None
    numbers = np.array([atom.element.atomic_number for atom in fixer.topology.atoms()], dtype=np.int32)
    positions = np.asarray(fixer.positions.value_in_unit(unit.angstrom), dtype=np.float64)
    if len(numbers) == 0:
        raise StructureError(f"{path}: no protein atoms left after preparation")
    return numbers, positions


def _atomic_masses() -> np.ndarray:
    from ase.data import atomic_masses

    return np.asarray(atomic_masses)
