import json
import subprocess
import sys

import numpy as np
import pytest

from mmlwf.errors import DataError
from mmlwf.packed import MANIFEST, PackedDataset, PackedWriter, array_checksum
from mmlwf.structure import Structure

from .conftest import REPO


def _molecules(n, rng, with_q=False):
    out = []
    for i in range(n):
        k = int(rng.integers(1, 12))
        s = Structure(
            Z=rng.integers(1, 10, size=k),
            R=rng.standard_normal((k, 3)) * 3,
            E=float(rng.standard_normal()),
            F=rng.standard_normal((k, 3)),
            Qtot=float(rng.integers(-1, 2)),
            q=rng.standard_normal(k) if with_q else None,
            index=i,
        )
        out.append(s.checked("mem"))
    return out


def test_round_trip_and_manifest(tmp_path):
    mols = _molecules(50, np.random.default_rng(1), with_q=True)
    with PackedWriter(tmp_path / "ds", chunk_atoms=37) as w:  # many small flushes
        w.add_all(mols)
    ds = PackedDataset(tmp_path / "ds")
    assert len(ds) == 50
    assert set(ds.fields) == {"E", "Qtot", "Z", "R", "F", "q"}
    for i, s in enumerate(mols):
        row = ds[i]
        np.testing.assert_array_equal(row["Z"], s.Z)
        np.testing.assert_array_equal(row["R"], s.R.astype(np.float32))
        np.testing.assert_array_equal(row["F"], s.F.astype(np.float32))
        assert row["E"] == s.E and row["Qtot"] == s.Qtot
    m = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert m["n_molecules"] == 50 and m["n_atoms"] == sum(s.n_atoms for s in mols)
    assert m["fields"]["R"]["unit"] == "Angstrom" and m["fields"]["F"]["unit"] == "eV/Angstrom"
    assert m["fields"]["R"]["shape"] == [m["n_atoms"], 3]
    assert m["fields"]["F"]["sha256"] == array_checksum(ds.arrays["F"])
    assert m["fields"]["offsets"]["sha256"] == array_checksum(ds.offsets)
    assert m["elements"] == sorted({int(z) for s in mols for z in s.Z})


def test_gather_equals_per_molecule_rows(tmp_path):
    mols = _molecules(40, np.random.default_rng(2))
    with PackedWriter(tmp_path / "ds") as w:
        w.add_all(mols)
    ds = PackedDataset(tmp_path / "ds")
    idx = np.array([7, 3, 3, 39, 0, -1])
    g = ds.gather(idx)
    assert g["offsets"][0] == 0 and len(g["offsets"]) == len(idx) + 1
    for k, i in enumerate(idx):
        a, b = g["offsets"][k], g["offsets"][k + 1]
        row = ds[int(i)]
        np.testing.assert_array_equal(g["Z"][a:b], row["Z"])
        np.testing.assert_array_equal(g["R"][a:b], row["R"])
        assert g["E"][k] == row["E"]
    empty = ds.gather([])
    assert empty["Z"].shape == (0,) and list(empty["offsets"]) == [0]
    with pytest.raises(IndexError):
        ds.gather([40])


def test_atoms_carries_energy_and_forces(tmp_path, water_structures):
    with PackedWriter(tmp_path / "ds") as w:
        w.add_all(s.checked("mem") for s in water_structures)
    atoms = PackedDataset(tmp_path / "ds").atoms(2)
    s = water_structures[2]
    assert atoms.get_chemical_formula() == "H2O"
    assert atoms.get_potential_energy() == pytest.approx(s.E)
    np.testing.assert_allclose(atoms.get_forces(), s.F, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(atoms.get_dipole_moment(), s.D, rtol=1e-6, atol=1e-6)


def test_legacy_layout_without_manifest_opens(tmp_path):
    script = REPO.parent / "shared" / "bench" / "make_synthetic_packed.py"
    if not script.exists():
        pytest.skip("../shared/bench/make_synthetic_packed.py not present")
    subprocess.run([sys.executable, str(script), "300", str(tmp_path / "legacy")], check=True, capture_output=True)
    ds = PackedDataset(tmp_path / "legacy")
    assert ds.manifest is None and len(ds) == 300
    assert set(ds.fields) == {"E", "Qtot", "Z", "R", "F"}
    n = np.load(tmp_path / "legacy" / "n_atoms.npy")
    assert ds[299]["Z"].shape == (n[299],)


def test_truncated_file_is_rejected_naming_file_and_field(tmp_path, water_structures):
    with PackedWriter(tmp_path / "ds") as w:
        w.add_all(s.checked("mem") for s in water_structures)
    path = tmp_path / "ds" / "R_pack.f32"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"R_pack\.f32: field 'R': file is \d+ bytes, expected \d+ .*truncated"):
        PackedDataset(tmp_path / "ds")


def test_exception_inside_writer_leaves_nothing(tmp_path, water_structures):
    with pytest.raises(RuntimeError):
        with PackedWriter(tmp_path / "ds", chunk_atoms=1) as w:
            w.add_all(s.checked("mem") for s in water_structures)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite_and_is_replaced_atomically(tmp_path, water_structures):
    with PackedWriter(tmp_path / "ds") as w:
        w.add_all(s.checked("mem") for s in water_structures)
    with pytest.raises(FileExistsError, match="--overwrite"):
        PackedWriter(tmp_path / "ds")
    with PackedWriter(tmp_path / "ds", overwrite=True) as w:
        w.add(water_structures[0].checked("mem"))
    assert len(PackedDataset(tmp_path / "ds")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_field_set_must_not_change_between_structures(tmp_path, water_structures):
    a, b = water_structures[0].checked("x.xyz"), water_structures[1].checked("x.xyz")
    b.F = None
    with pytest.raises(DataError, match=r"x\.xyz: field 'F': structure 1: lacks 'F'"):
        with PackedWriter(tmp_path / "ds") as w:
            w.add(a, where="x.xyz")
            w.add(b, where="x.xyz")
    assert not (tmp_path / "ds").exists()


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path, water_structures):
    from mmlwf.tempdirs import host_id

    stale = tmp_path / f".ds.tmp-{host_id()}-999999999-abc"  # this host, a PID that is not alive
    stale.mkdir()
    with PackedWriter(tmp_path / "ds") as w:
        w.add(water_structures[0].checked("mem"))
    assert not stale.exists()
