"""Each reader on the real reference data: values round-trip to float32 after unit conversion."""

import ase.db
import ase.io
import h5py
import numpy as np
import pytest
from ase import units as u

from mmlwf.convert import convert
from mmlwf.io import open_source
from mmlwf.packed import PackedDataset, read_manifest

from .conftest import shared_file



def _assert_f32(stored, expected):
    """stored float32 equals the float64 expected value rounded to float32."""
    np.testing.assert_array_equal(stored, np.asarray(expected, dtype=np.float64).astype(np.float32))


def test_physnet_npz_h2co(tmp_path):
    src = shared_file("h2co_b3lyp_4001.npz")
    ds = PackedDataset(convert([src], tmp_path / "ds"))
    raw = np.load(src)
    assert len(ds) == 4001 and set(ds.fields) == {"E", "Qtot", "Z", "R", "F", "D"}
    g = ds.gather(np.arange(len(ds)))
    _assert_f32(g["R"], raw["R"].reshape(-1, 3))  # all four atoms are real in every frame
    _assert_f32(g["F"], raw["F"].reshape(-1, 3))
    _assert_f32(g["D"], raw["D"])
    np.testing.assert_array_equal(g["E"], raw["E"])
    np.testing.assert_array_equal(g["Z"], raw["Z"].reshape(-1))
    m = read_manifest(tmp_path / "ds")
    assert m["sources"][0]["units"]["energy"] == "eV" and m["sources"][0]["format"] == "npz"


def test_sgdml_npz_kcal_per_mol_converted(tmp_path):
    src = shared_file("sgdml_ethanol_ccsd_t-train.npz")
    ds = PackedDataset(convert([src], tmp_path / "ds"))
    raw = np.load(src)
    kcal = u.kcal / u.mol
    assert len(ds) == 1000
    np.testing.assert_allclose(ds.arrays["E"], raw["E"][:, 0] * kcal, rtol=1e-15)
    _assert_f32(np.asarray(ds.arrays["F"]), (raw["F"] * kcal).reshape(-1, 3))
    _assert_f32(np.asarray(ds.arrays["R"]), raw["R"].reshape(-1, 3))
    np.testing.assert_array_equal(ds[17]["Z"], raw["z"])
    assert read_manifest(tmp_path / "ds")["sources"][0]["units"]["energy"] == "kcal/mol"


@pytest.mark.parametrize("name", ["rmd17_ethanol_train_1000.xyz", "rmd17_aspirin_train.xyz"])
def test_extxyz(tmp_path, name):
    src = shared_file(name)
    frames = ase.io.read(src, index=":")
    ds = PackedDataset(convert([src], tmp_path / "ds"))
    assert len(ds) == len(frames)
    for i in (0, 1, len(frames) // 2, len(frames) - 1):
        row = ds[i]
        assert row["E"] == frames[i].get_potential_energy()
        _assert_f32(row["R"], frames[i].positions)
        _assert_f32(row["F"], frames[i].get_forces())


def test_extxyz_without_forces_isolated_atoms(tmp_path):
    ds = PackedDataset(convert([shared_file("ethanol_isolated_atoms.xyz")], tmp_path / "ds"))
    assert len(ds) == 4 and "F" not in ds.fields
    assert [int(ds[i]["Z"][0]) for i in range(4)] == [1, 6, 8, 7]
    assert ds[0]["E"] == pytest.approx(-13.568422383046626, abs=0)


def test_several_sources_concatenate(tmp_path):
    a = shared_file("rmd17_ethanol_train_1000.xyz")
    b = shared_file("rmd17_ethanol_test_1000.xyz")
    ds = PackedDataset(convert([a, b], tmp_path / "ds"))
    assert len(ds) == 2000
    last = ase.io.read(b, index=-1)
    assert ds[1999]["E"] == last.get_potential_energy()
    sources = read_manifest(tmp_path / "ds")["sources"]
    assert [s["n_molecules"] for s in sources] == [1000, 1000]
    assert [s["first_index"] for s in sources] == [0, 1000]
    assert all(len(s["sha256"]) == 64 for s in sources)


def _ethanol_frames(n=40):
    return ase.io.read(shared_file("rmd17_ethanol_train_1000.xyz"), index=f":{n}")


def test_ase_database_rows_and_data(tmp_path):
    frames = _ethanol_frames()
    path = tmp_path / "eth.db"
    with ase.db.connect(path) as db:
        for k, atoms in enumerate(frames):
            if k % 2:  # half store results on the row, half in data under custom names
                db.write(atoms)
            else:
                plain = atoms.copy()
                db.write(plain, data={"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()})
    ds = PackedDataset(convert([path], tmp_path / "ds"))
    assert len(ds) == len(frames)
    for i, atoms in enumerate(frames):
        assert ds[i]["E"] == atoms.get_potential_energy()
        _assert_f32(ds[i]["F"], atoms.get_forces())


def test_ase_database_without_forces_and_key_map(tmp_path):
    frames = _ethanol_frames(5)
    path = tmp_path / "e.db"
    with ase.db.connect(path) as db:
        for atoms in frames:
            db.write(atoms.copy(), key_value_pairs={"wb97x_energy": atoms.get_potential_energy() / u.Hartree})
    ds = PackedDataset(convert([path], tmp_path / "ds", keys=["E=wb97x_energy"], energy_unit="Hartree"))
    assert "F" not in ds.fields
    np.testing.assert_allclose(ds.arrays["E"], [a.get_potential_energy() for a in frames], rtol=1e-14)


def test_hdf5_ani_groups_in_hartree_and_bohr(tmp_path):
    frames = ase.io.read(shared_file("rmd17_aspirin_train.xyz"), index=":30")
    eth = _ethanol_frames(20)
    path = tmp_path / "ani.h5"
    with h5py.File(path, "w") as h5:
        for gname, fr in (("aspirin", frames), ("nested/ethanol", eth)):
            g = h5.create_group(gname)
            g["species"] = np.array([s.encode() for s in fr[0].get_chemical_symbols()])
            g["coordinates"] = np.stack([a.positions for a in fr]) / u.Bohr
            g["energies"] = np.array([a.get_potential_energy() for a in fr]) / u.Hartree
            g["forces"] = np.stack([a.get_forces() for a in fr]) / (u.Hartree / u.Bohr)
    src = open_source(path)
    assert src.format == "hdf5" and not src.flat
    ds = PackedDataset(convert([path], tmp_path / "ds", energy_unit="Hartree", length_unit="Bohr"))
    expected = frames + eth
    assert len(ds) == 50
    for i in (0, 29, 30, 49):
        np.testing.assert_allclose(ds[i]["E"], expected[i].get_potential_energy(), rtol=1e-14)
        np.testing.assert_allclose(ds[i]["R"], expected[i].positions, rtol=3e-7, atol=1e-6)
        np.testing.assert_allclose(ds[i]["F"], expected[i].get_forces(), rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(ds[i]["Z"], expected[i].numbers)


def test_hdf5_flat_padded_with_unit_attribute(tmp_path):
    raw = np.load(shared_file("h2co_b3lyp_4001.npz"))
    path = tmp_path / "flat.h5"
    kcal = u.kcal / u.mol
    with h5py.File(path, "w") as h5:
        h5["R"] = raw["R"][:100]
        h5["Z"] = raw["Z"][:100]
        h5["E"] = raw["E"][:100] / kcal
        h5["E"].attrs["units"] = "kcal/mol"
        h5["F"] = raw["F"][:100] / kcal
    src = open_source(path)
    assert src.flat and src.units.energy == "kcal/mol"
    ds = PackedDataset(convert([path], tmp_path / "ds"))
    np.testing.assert_allclose(ds.arrays["E"], raw["E"][:100], rtol=1e-14)
    np.testing.assert_allclose(ds.gather(range(100))["F"], raw["F"][:100].reshape(-1, 3), rtol=1e-6, atol=1e-6)


def test_npz_aliases_padding_and_shared_z(tmp_path):
    rng = np.random.default_rng(3)
    n, width = 6, 5
    Z = np.zeros((n, width), int)
    R = np.zeros((n, width, 3))
    counts = [3, 5, 4, 3, 5, 2]
    for i, c in enumerate(counts):
        Z[i, :c] = rng.integers(1, 9, c)
        R[i, :c] = rng.standard_normal((c, 3)) * 2
    np.savez(tmp_path / "a.npz", positions=R, atomic_numbers=Z, energies=rng.standard_normal((n, 1)),
             forces=rng.standard_normal((n, width, 3)), total_charge=np.ones(n), Dxyz=rng.standard_normal((n, 3)))
    ds = PackedDataset(convert([tmp_path / "a.npz"], tmp_path / "ds"))
    assert list(ds.n_atoms) == counts and set(ds.fields) == {"E", "Qtot", "Z", "R", "F", "D"}
    assert ds[0]["Qtot"] == 1.0
    np.savez(tmp_path / "b.npz", R=R[:, :3], z=np.array([8, 1, 1]), E=np.zeros(n))
    ds = PackedDataset(convert([tmp_path / "b.npz"], tmp_path / "ds2"))
    assert list(ds.n_atoms) == [3] * n


def test_npz_atomic_charges_mono(tmp_path):
    R = np.random.default_rng(0).standard_normal((2, 3, 3))
    mono = np.array([[-0.8, 0.4, 0.4], [-0.7, 0.35, 0.35]])
    np.savez(tmp_path / "m.npz", R=R, Z=np.array([[8, 1, 1]] * 2), E=np.zeros(2), mono=mono)
    ds = PackedDataset(convert([tmp_path / "m.npz"], tmp_path / "ds"))
    _assert_f32(ds[1]["q"], mono[1])


REFERENCE_FILES = {  # file -> units its README gives (converter defaults where they agree)
    "h2co_b3lyp_4001.npz": {},
    "sgdml_ethanol_ccsd_t-train.npz": {"energy_unit": "kcal/mol"},
    "rmd17_ethanol_train_1000.xyz": {},
    "rmd17_ethanol_test_1000.xyz": {},
    "ethanol_isolated_atoms.xyz": {},
    "rmd17_aspirin_train.xyz": {},
    "rmd17_aspirin_test.xyz": {},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_every_reference_file_converts_and_validates(tmp_path, name):
    from mmlwf.validate import validate_dataset

    out = convert([shared_file(name)], tmp_path / "ds", **REFERENCE_FILES[name])
    report = validate_dataset(out)
    assert report.ok, [f.one_line() for f in report.errors]
    assert report.n_molecules == len(PackedDataset(out))


def test_packed_dataset_is_a_source_that_round_trips_every_field(tmp_path):
    from mmlwf.convert import convert
    from mmlwf.io import detect_format
    from mmlwf.packed import PackedDataset, PackedWriter
    from mmlwf.structure import Structure

    rng = np.random.default_rng(0)
    with PackedWriter(tmp_path / "a") as w:
        for i in range(4):
            n, g = 3 + i, 5 + 2 * i
            w.add(Structure(Z=np.full(n, 6), R=rng.normal(size=(n, 3)) * 2, E=-float(i), Qtot=float(i % 2),
                            F=rng.normal(size=(n, 3)), D=rng.normal(size=3), q=rng.normal(size=n),
                            grid=rng.normal(size=(g, 3)) * 4, esp=rng.normal(size=g)))
    assert detect_format(tmp_path / "a") == "packed"
    b = PackedDataset(convert([tmp_path / "a", tmp_path / "a"], tmp_path / "b"))
    a = PackedDataset(tmp_path / "a")
    assert len(b) == 8 and set(a.fields) == set(b.fields)
    for i in range(8):
        for key, value in a[i % 4].items():
            assert np.array_equal(b[i][key], value), (i, key)
