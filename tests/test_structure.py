"""Structure preparation on real files and on small files built from ubiquitin's first residues."""

import numpy as np
import pytest

from simed_stream.errors import StructureError
from simulator.config import StructureOptions
from simulator.physics import check_fits
from simulator.structure import load_structure

from conftest import BPTI, UBIQUITIN, small_config


def _atom_lines(n_residues=3):
    lines = [line for line in UBIQUITIN.read_text().splitlines() if line.startswith("ATOM")]
    return [line for line in lines if int(line[22:26]) <= n_residues]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_ubiquitin_gets_hydrogens_and_is_centred(tmp_path):
    structure = load_structure(UBIQUITIN, cache_dir=tmp_path)
    heavy = len(_atom_lines(1000))
    assert heavy == 602
    assert structure.hydrogens_added
    n_hydrogen = int((structure.atomic_numbers == 1).sum())
    assert len(structure.atomic_numbers) == heavy + n_hydrogen and n_hydrogen > 500
    masses = np.array([1.008, 12.011, 14.007, 15.999, 32.06])[
        np.searchsorted([1, 6, 7, 8, 16], structure.atomic_numbers)
    ]
    centre = (masses[:, None] * structure.positions_A).sum(0) / masses.sum()
    np.testing.assert_allclose(centre, 0, atol=1e-3)
    assert structure.mass_kDa == pytest.approx(8.56, abs=0.05)


def test_prepared_structure_is_cached(tmp_path):
    first = load_structure(BPTI, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("1bpi-*.npz"))) == 1
    second = load_structure(BPTI, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.positions_A, second.positions_A)
    np.testing.assert_array_equal(first.atomic_numbers, second.atomic_numbers)


def test_waters_ligands_altlocs_and_extra_models_are_removed(tmp_path):
    lines = _atom_lines()
    water = "HETATM 9001  O   HOH A 201      10.000  10.000  10.000  1.00 20.00           O"
    ligand = "HETATM 9002 FE   HEM A 202      12.000  10.000  10.000  1.00 20.00          FE"
    # every atom of residue 1 in two alternate conformations, B shifted by 5 Å
    alt = []
    for line in lines:
        if int(line[22:26]) == 1:
            alt.append(line[:16] + "A" + line[17:54] + " 0.50" + line[60:])
            shifted = float(line[30:38]) + 5.0
            alt.append(line[:16] + "B" + line[17:30] + f"{shifted:8.3f}" + line[38:54] + " 0.50" + line[60:])
        else:
            alt.append(line)
    model2 = [line[:30] + f"{float(line[30:38]) + 50:8.3f}" + line[38:] for line in lines]
    path = _write(tmp_path / "messy.pdb", ["MODEL        1", *alt, water, ligand, "ENDMDL", "MODEL        2", *model2, "ENDMDL"])
    options = StructureOptions(add_hydrogens=False)
    structure = load_structure(path, options, cache_dir=tmp_path)
    assert len(structure.atomic_numbers) == len(lines)  # one conformation, no water, no heme, model 1 only
    assert 26 not in structure.atomic_numbers
    assert structure.radius_A < 15  # model 2 (shifted 50 Å) would make it far larger


def test_existing_hydrogens_are_kept(tmp_path):
    structure = load_structure(UBIQUITIN, cache_dir=tmp_path)
    lines = []
    for i, (z, (x, y, zc)) in enumerate(zip(structure.atomic_numbers[:40], structure.positions_A[:40])):
        element = {1: "H", 6: "C", 7: "N", 8: "O", 16: "S"}[int(z)]
        lines.append(f"ATOM  {i + 1:5d}  {element:<3s} GLY A{i + 1:4d}    {x:8.3f}{y:8.3f}{zc:8.3f}  1.00  0.00          {element:>2s}")
    assert (structure.atomic_numbers[:40] == 1).any()
    again = load_structure(_write(tmp_path / "with_h.pdb", lines), cache_dir=tmp_path)
    assert not again.hydrogens_added
    assert len(again.atomic_numbers) == 40


def test_missing_chain_lists_the_chains_present(tmp_path):
    path = _write(tmp_path / "chain_b.pdb", [line[:21] + "B" + line[22:] for line in _atom_lines()])
    with pytest.raises(StructureError, match=r"no polymer chain 'A'.*chains present: B"):
        load_structure(path, cache_dir=tmp_path)
    structure = load_structure(path, StructureOptions(chain="B", add_hydrogens=False), cache_dir=tmp_path)
    assert structure.chain == "B"


def test_empty_garbage_and_non_protein_files(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_text("\n")
    with pytest.raises(StructureError, match="empty"):
        load_structure(empty, cache_dir=tmp_path)
    waters = _write(tmp_path / "waters.pdb", [
        f"HETATM{i:5d}  O   HOH A{i:4d}    {i * 3.0:8.3f}   0.000   0.000  1.00 20.00           O" for i in range(1, 6)
    ])
    with pytest.raises(StructureError, match="no polymer chain 'A'"):
        load_structure(waters, cache_dir=tmp_path)
    dna = _write(tmp_path / "dna.pdb", [
        "ATOM      1  P    DA A   1       0.000   0.000   0.000  1.00 20.00           P",
        "ATOM      2  C1'  DA A   1       1.500   0.000   0.000  1.00 20.00           C",
        "ATOM      3  P    DT A   2       6.000   0.000   0.000  1.00 20.00           P",
        "ATOM      4  C1'  DT A   2       7.500   0.000   0.000  1.00 20.00           C",
    ])
    with pytest.raises(StructureError, match="not a protein"):
        load_structure(dna, cache_dir=tmp_path)
    missing = tmp_path / "missing.pdb"
    with pytest.raises(StructureError, match="cannot read"):
        load_structure(missing, cache_dir=tmp_path)


def test_too_large_protein_is_refused_before_abtem_wraps_it(tmp_path):
    structure = load_structure(UBIQUITIN, cache_dir=tmp_path)  # 51.6 Å across
    with pytest.raises(StructureError, match=r"does not fit the 50 Å box"):
        check_fits(structure, small_config())
    with pytest.raises(StructureError, match="image field"):
        check_fits(structure, small_config(box_A=70.0, gpts=256, image_field_A=35.0, image_size_px=128))
    check_fits(structure, small_config(box_A=70.0, gpts=256, image_field_A=70.0, image_size_px=256))
