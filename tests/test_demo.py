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
