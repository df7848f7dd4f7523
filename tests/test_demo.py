"""Demo data: deterministic, labelled, written atomically."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from mmlwf.demo import generate_demo_data
from mmlwf.errors import ConfigError

SMALL = dict(molecules=("H2O", "NH3"), n_per_molecule=3, steps_between=5)


def test_same_settings_give_identical_bytes(tmp_path):
    a = generate_demo_data(tmp_path / "a.extxyz", seed=3, **SMALL)
    b = generate_demo_data(tmp_path / "b.extxyz", seed=3, **SMALL)
    c = generate_demo_data(tmp_path / "c.extxyz", seed=4, **SMALL)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.extxyz", "b.extxyz", "c.extxyz"]


def test_frames_carry_gfn2_xtb_energy_forces_charges_and_dipole(tmp_path):
    from tblite.ase import TBLite

    path = generate_demo_data(tmp_path / "demo.extxyz", seed=0, **SMALL)
    frames = ase.io.read(path, index=":")
    assert [f.info["molecule"] for f in frames] == ["H2O"] * 3 + ["NH3"] * 3
    assert len({f.positions.tobytes() for f in frames}) == 6  # distinct conformers
    for frame in frames:
        stored = frame.calc.results
        frame.calc = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
        assert np.isclose(frame.get_potential_energy(), stored["energy"], atol=1e-6)
        assert np.allclose(frame.get_forces(), stored["forces"], atol=1e-6)
        assert np.allclose(frame.get_charges(), stored["charges"], atol=1e-6)
        assert np.allclose(frame.get_dipole_moment(), stored["dipole"], atol=1e-6)
        assert abs(stored["charges"].sum()) < 1e-6  # neutral molecules


def test_emt_teacher_labels_energy_and_forces(tmp_path):
    from ase.calculators.emt import EMT

    path = generate_demo_data(tmp_path / "demo.extxyz", seed=0, teacher="emt", **SMALL)
    for frame in ase.io.read(path, index=":"):
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        frame.calc = EMT()
        assert np.isclose(frame.get_potential_energy(), energy, atol=1e-6)
        assert np.allclose(frame.get_forces(), forces, atol=1e-6)


def test_demo_converts_with_charges_and_dipoles(tmp_path):
    from mmlwf.convert import convert
    from mmlwf.packed import PackedDataset

    path = generate_demo_data(tmp_path / "demo.extxyz", seed=0, **SMALL)
    ds = PackedDataset(convert([path], tmp_path / "packed"))
    assert {"E", "F", "D", "q"} <= set(ds.fields)
    assert len(ds) == 6


def test_earlier_molecules_do_not_depend_on_later_ones(tmp_path):
    one = generate_demo_data(tmp_path / "1.extxyz", molecules=["H2O"], n_per_molecule=2)
    two = generate_demo_data(tmp_path / "2.extxyz", molecules=["H2O", "CH4"], n_per_molecule=2)
    one, two = ase.io.read(one, ":"), ase.io.read(two, ":")
    for a, b in zip(one, two[:2]):
        assert np.array_equal(a.positions, b.positions)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(teacher="dft"), "teacher 'dft'"),
        (dict(molecules=["NotAMolecule"]), "molecule 'NotAMolecule'"),
        (dict(molecules=["SiH4"], teacher="emt"), "cannot handle molecule 'SiH4'"),
        (dict(n_per_molecule=0), "n_per_molecule"),
    ],
)
def test_bad_settings_raise_config_error_and_write_nothing(tmp_path, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        generate_demo_data(tmp_path / "demo.extxyz", **{**SMALL, **kwargs})
    assert list(tmp_path.iterdir()) == []


# -- isolated atoms: the demo dataset's element reference energies


def test_ground_spin_states_are_lower_than_closed_shell_atoms():
    from mmlwf.demo import isolated_atom_energy

    # O: triplet (ground state) below singlet by eV, as it must be (GFN2-xTB without spin
    # polarisation puts the triplet 0.05 eV above)
    assert isolated_atom_energy(8) < isolated_atom_energy(8, multiplicity=1) - 1.0
    assert isolated_atom_energy(8) == isolated_atom_energy(8, multiplicity=3)
    assert isolated_atom_energy(6) < isolated_atom_energy(6, multiplicity=1) - 1.0
    assert isolated_atom_energy(7) < isolated_atom_energy(7, multiplicity=2) - 1.0


def test_spin_polarisation_leaves_closed_shell_molecules_unchanged():
    """The atoms' method (spin-polarised GFN2-xTB) is the molecules' (closed shells)."""
    from ase.build import molecule
    from tblite.ase import TBLite

    from mmlwf.demo import make_teacher

    energies = []
    for calc in (make_teacher("gfn2-xtb"), TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0,
                                                  spin_polarization=1.0)):
        atoms = molecule("CH3OH")
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    assert energies[0] == pytest.approx(energies[1], abs=1e-8)


def test_isolated_atoms_file_reads_as_element_energies(tmp_path):
    from mmlwf.demo import generate_demo_data, isolated_atom_energy
    from mmlwf.stats import isolated_atom_energies

    generate_demo_data(tmp_path / "demo.extxyz", seed=0, isolated_atoms=tmp_path / "atoms.extxyz", **SMALL)
    got = isolated_atom_energies(tmp_path / "atoms.extxyz")
    assert sorted(got) == [1, 7, 8]  # the elements of H2O and NH3
    for z, e in got.items():
        assert e == pytest.approx(isolated_atom_energy(z), abs=1e-9)
    frames = ase.io.read(tmp_path / "atoms.extxyz", index=":")
    assert [f.info["multiplicity"] for f in frames] == [2, 4, 3]
    # the water of the demo lies below its atoms by its atomisation energy (about 10 eV)
    water = ase.io.read(tmp_path / "demo.extxyz", index=0)
    atomisation = water.get_potential_energy() - (2 * got[1] + got[8])
    assert -11.5 < atomisation < -9.0


def test_teacher_dipoles_are_about_the_origin():
    """TEACHER_FACTS: tblite's dipole moves by Q t when a charged molecule moves by t."""
    from ase.build import molecule
    from tblite.ase import TBLite

    from mmlwf.demo import TEACHER_FACTS

    assert TEACHER_FACTS["gfn2-xtb"]["dipole_reference"] == "origin"
    dipoles = []
    for shift in (0.0, 2.0):
        atoms = molecule("NH3")
        atoms.positions += shift
        atoms.calc = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0, charge=1, multiplicity=2)
        atoms.get_potential_energy()
        dipoles.append(atoms.calc.results["dipole"])
    np.testing.assert_allclose(dipoles[1] - dipoles[0], [2.0, 2.0, 2.0], atol=1e-4)


def test_the_default_config_states_the_teachers_facts_and_uses_its_atoms():
    from pathlib import Path

    import yaml

    from mmlwf.demo import TEACHER_FACTS

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    demo = config["datasets"]["demo"]
    facts = TEACHER_FACTS[config["demo"]["teacher"]]
    assert demo["dispersion"] is facts["dispersion"] and demo["dipole_reference"] == facts["dipole_reference"]
    assert demo["stats"]["element_energies"] == "results/demo/isolated_atoms/demo.extxyz"
    assert demo["sources"] == ["results/demo/demo.extxyz"]
    rules = (Path(__file__).resolve().parents[1] / "rules" / "demo.smk").read_text()
    assert 'isolated_atoms="results/demo/isolated_atoms/{name}.extxyz"' in rules
