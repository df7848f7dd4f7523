"""Reference labelling with pyscf: ESP against an independent evaluation, energy and dipole
against pyscf directly, forces against finite differences, the cache, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase import units as U

import mmlwf.label as label_mod
from mmlwf.cli import main
from mmlwf.errors import ConfigError, DataError
from mmlwf.esp.points import PointSettings, radii
from mmlwf.label import LabelSettings, esp_at, label_one, label_structures
from mmlwf.packed import PackedDataset

WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
FAST = dict(basis="sto-3g")
FEW = PointSettings(spacing=0.8, max_points=60)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """pyscf on one thread: faster for molecules this small on a shared machine."""
    from pyscf import lib

    previous = lib.num_threads()
    lib.num_threads(1)
    yield
    lib.num_threads(previous)


def _waters(path, n=3, seed=0, charge=None):
    import ase.io

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = Atoms("OH2", positions=WATER + rng.normal(0, 0.03, (3, 3)))
        if charge is not None:
            a.info["charge"] = charge
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return path


def _scf(Z, R, basis, charge=0, spin=0):
    from pyscf import gto, scf

    mol = gto.M(atom=[(int(z), tuple(r)) for z, r in zip(Z, R)], unit="Angstrom", basis=basis,
                charge=charge, spin=spin, verbose=0)
    mf = (scf.RHF(mol) if spin == 0 else scf.UHF(mol)).run(conv_tol=1e-10)
    return mol, mf


@pytest.mark.parametrize("basis", ["sto-3g", "6-31g*"])
def test_labels_match_independent_pyscf(basis):
    Z = np.array([8, 1, 1])
    out = label_one(Z, WATER, 0, None, LabelSettings(basis=basis), PointSettings(spacing=0.7))
    mol, mf = _scf(Z, WATER, basis)
    dm = mf.make_rdm1()
    assert out["E"] == pytest.approx(mf.e_tot * U.Hartree, abs=1e-5)
    # dipole: pyscf's dip_moment, and nuclear minus electronic first moment (e·Bohr -> e·Å)
    np.testing.assert_allclose(out["D"], mf.dip_moment(unit="AU", verbose=0) * U.Bohr, atol=1e-6)
    r_el = np.einsum("xij,ji->x", mol.intor("int1e_r"), dm)
    np.testing.assert_allclose(out["D"], (mol.atom_charges() @ mol.atom_coords() - r_el) * U.Bohr, atol=1e-6)
    # ESP at a few points, one point at a time: sum Z/|p - R| - Tr(D <mu|1/|r - p||nu>)
    grid = out["grid"]
    assert grid.shape[0] > 100
    picks = np.linspace(0, grid.shape[0] - 1, 5).astype(int)
    direct = []
    for k in picks:
        p = grid[k] / U.Bohr
        v_nuc = np.sum(mol.atom_charges() / np.linalg.norm(mol.atom_coords() - p, axis=1))
        with mol.with_rinv_origin(p):
            v_el = np.einsum("ij,ji->", mol.intor("int1e_rinv"), dm)
        direct.append(v_nuc - v_el)
    direct = np.array(direct)
    # the vectorised evaluation with the same density matrix: equal to rounding
    np.testing.assert_allclose(esp_at(mol, dm, grid[picks] / U.Bohr), direct, rtol=1e-10, atol=1e-12)
    # the labels (their own SCF, converged to 1e-9 Hartree): equal to the SCF tolerance
    np.testing.assert_allclose(out["esp"][picks], direct * U.Hartree, rtol=1e-5, atol=1e-6)
    # the points are in the 1.4-2.0 vdW shell
    d = np.linalg.norm(grid[:, None] - WATER[None], axis=-1) / radii(Z)[None]
    assert np.all(d.min(axis=1) >= 1.4) and np.all(d.min(axis=1) <= 2.0)


def test_open_shell_and_charge_and_mulliken():
    Z = np.array([8, 1])  # OH radical, then OH- anion
    R = WATER[:2]
    rad = label_one(Z, R, 0, None, LabelSettings(charges="mulliken", **FAST), FEW)
    _, mf = _scf(Z, R, "sto-3g", spin=1)
    assert rad["E"] == pytest.approx(mf.e_tot * U.Hartree, abs=1e-5)
    assert rad["q"].sum() == pytest.approx(0.0, abs=1e-8)
    anion = label_one(Z, R, -1, None, LabelSettings(charges="mulliken", **FAST), FEW)
    assert anion["q"].sum() == pytest.approx(-1.0, abs=1e-8)
    # far from a negative ion the potential is negative: about -1/r
    assert np.all(anion["esp"] < 0)


def test_forces_are_minus_the_energy_gradient():
    Z = np.array([8, 1, 1])
    s = LabelSettings(forces=True, **FAST)
    out = label_one(Z, WATER, 0, None, s, FEW)
    h = 1e-3
    for atom, axis in ((1, 1), (0, 2)):
        R = WATER.copy()
        R[atom, axis] += h
        ep = label_one(Z, R, 0, None, LabelSettings(**FAST), FEW)["E"]
        R[atom, axis] -= 2 * h
        em = label_one(Z, R, 0, None, LabelSettings(**FAST), FEW)["E"]
        assert out["F"][atom, axis] == pytest.approx(-(ep - em) / (2 * h), abs=2e-4)


def test_density_mode_points_lie_in_the_window():
    from pyscf.dft import numint

    Z = np.array([8, 1, 1])
    ps = PointSettings(mode="density", spacing=0.4)
    out = label_one(Z, WATER, 0, None, LabelSettings(**FAST), ps)
    mol, mf = _scf(Z, WATER, "sto-3g")
    rho = numint.eval_rho(mol, numint.eval_ao(mol, out["grid"] / U.Bohr), mf.make_rdm1())
    assert out["grid"].shape[0] > 50
    assert np.all((rho >= 1e-4 * (1 - 1e-6)) & (rho <= 1e-3 * (1 + 1e-6)))


def test_label_structures_writes_a_dataset_and_the_cache_resumes(tmp_path, monkeypatch):
    src = _waters(tmp_path / "w.xyz", n=3)
    cache = tmp_path / "cache"
    calls = []
    real = label_mod._run_scf

    def counting(mol, settings):
        calls.append(1)
        if len(calls) == 2 and not hasattr(counting, "resumed"):
            raise KeyboardInterrupt  # interrupted after the first structure
        return real(mol, settings)

    monkeypatch.setattr(label_mod, "_run_scf", counting)
    with pytest.raises(KeyboardInterrupt):
        label_structures([src], tmp_path / "ds", points=FEW, cache_dir=cache, **FAST)
    assert not (tmp_path / "ds").exists() and len(list(cache.glob("*.npz"))) == 1
    counting.resumed = True
    calls.clear()
    out = label_structures([src], tmp_path / "ds", points=FEW, cache_dir=cache, **FAST)
    assert len(calls) == 2  # the first structure came from the cache
    ds = PackedDataset(out)
    assert len(ds) == 3 and set(ds.fields) >= {"E", "D", "grid", "esp", "Qtot"}
    assert np.all(np.diff(ds.grid_offsets) == 60)
    assert ds.manifest["labeller"]["basis"] == "sto-3g" and ds.manifest["labeller"]["cached"] == 1
    # a second run does no SCF at all and writes the same values
    monkeypatch.setattr(label_mod, "_run_scf", lambda *a: pytest.fail("SCF run despite the cache"))
    again = PackedDataset(label_structures([src], tmp_path / "ds2", points=FEW, cache_dir=cache, **FAST))
    for name in ("E", "D", "grid", "esp"):
        np.testing.assert_array_equal(again.arrays[name], ds.arrays[name])
    # other settings are another cache key
    calls.clear()
    monkeypatch.setattr(label_mod, "_run_scf", counting)
    label_structures([src], tmp_path / "ds3", points=FEW, cache_dir=cache, max_structures=1, method="HF",
                     basis="3-21g")
    assert len(calls) == 1
    # a damaged entry (of either level of theory) is recomputed and rewritten; the rest is reused
    victim = sorted(cache.glob("*.npz"))[0]
    victim.write_bytes(b"not an npz")
    calls.clear()
    label_structures([src], tmp_path / "ds4", points=FEW, cache_dir=cache, **FAST)
    label_structures([src], tmp_path / "ds5", points=FEW, cache_dir=cache, basis="3-21g", max_structures=1)
    assert len(calls) == 1 and victim.read_bytes()[:2] == b"PK"


def test_charge_from_the_data(tmp_path):
    src = _waters(tmp_path / "w.xyz", n=1)
    import ase.io

    oh = Atoms("OH", positions=WATER[:2])
    oh.info["charge"] = -1
    ase.io.write(tmp_path / "oh.xyz", oh, format="extxyz")
    ds = PackedDataset(label_structures([src, tmp_path / "oh.xyz"], tmp_path / "ds", points=FEW, **FAST))
    assert ds.arrays["Qtot"].tolist() == [0.0, -1.0]


def test_charged_dipoles_are_stored_about_the_centroid_and_no_dispersion_is_recorded(tmp_path):
    """pyscf gives dipoles about the origin; the dataset stores them about the centroid, where
    pyscf's own dipole about that point agrees, and a translated OH- stores the same dipole."""
    import ase.io
    from pyscf import scf

    from mmlwf.label import build_molecule

    R = WATER[:2] + [1.0, -2.0, 3.0]
    paths = []
    for k, shift in enumerate((0.0, 5.0)):
        oh = Atoms("OH", positions=R + shift)
        oh.info["charge"] = -1
        ase.io.write(tmp_path / f"oh{k}.xyz", oh, format="extxyz")
        paths.append(tmp_path / f"oh{k}.xyz")
    ds = PackedDataset(label_structures(paths, tmp_path / "ds", points=FEW, **FAST))
    assert ds.manifest["includes_dispersion"] is False and ds.dipole_reference == "centroid"
    mf = scf.RHF(build_molecule(np.array([8, 1]), R, "sto-3g", -1, 0))
    mf.verbose = 0
    mf.kernel()
    about_centroid = mf.dip_moment(unit="AU", origin=R.mean(axis=0) / U.Bohr, verbose=0) * U.Bohr
    about_origin = mf.dip_moment(unit="AU", verbose=0) * U.Bohr
    assert np.abs(about_origin - about_centroid).max() > 1.0  # charged: the point matters
    np.testing.assert_allclose(ds.arrays["D"][0], about_centroid, atol=1e-4)
    np.testing.assert_allclose(ds.arrays["D"][1], about_centroid, atol=1e-4)


def test_label_cli_and_bad_input(tmp_path, capsys):
    src = _waters(tmp_path / "w.xyz", n=2)
    code = main(["label", str(src), "-o", str(tmp_path / "ds"), "--basis", "sto-3g", "--spacing", "0.8",
                 "--max-points", "40", "--charges", "mulliken", "--threads", "1"])
    assert code == 0 and "2 structures, 80 ESP points (2 computed" in capsys.readouterr().out
    assert "q" in PackedDataset(tmp_path / "ds").fields
    for args, words in ((["--method", "NOT-A-FUNCTIONAL"], "cannot run method"),
                        (["--basis", "no-such-basis"], "cannot build the molecule"),
                        (["--spin", "1"], "10 electrons cannot have spin"),
                        (["--vdw-inner", "2.5"], "inner < outer")):
        code = main(["label", str(src), "-o", str(tmp_path / "bad"), *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
        assert not (tmp_path / "bad").exists()
    unknown = Atoms("OFe", positions=WATER[:2])
    unknown.write(tmp_path / "fe.xyz", format="extxyz")
    with pytest.raises(DataError, match="fe.xyz: field 'Z': structure 0: no van der Waals radius for Fe"):
        label_structures([tmp_path / "fe.xyz"], tmp_path / "bad", points=FEW, **FAST)
    with pytest.raises(ConfigError, match="charges"):
        label_structures([src], tmp_path / "bad", charges="hirshfeld")


@pytest.mark.parametrize("tag", ["", "-acute", "-obtuse"])
def test_labeller_agrees_with_the_reference_cubes(tmp_path, tag):
    """End to end: the cube reader (Bohr, Hartree/e) and the labeller (Å, V) agree on the real
    water cubes, computed elsewhere at another level of theory, to about 1 kcal/(mol·e)
    against an ESP of about 21 kcal/(mol·e) RMS: any unit or geometry slip would show."""
    from mmlwf.convert import convert

    from .conftest import SHARED_DATA

    pot, dens = SHARED_DATA / "esp" / f"h2o-pot{tag}.cube", SHARED_DATA / "esp" / f"h2o-dens{tag}.cube"
    if not (pot.exists() and dens.exists()):
        pytest.skip(f"reference data {pot} not present (../shared/data is not beside the repo)")
    row = PackedDataset(convert([pot], tmp_path / "ds", density=[dens], points=PointSettings(
        mode="density", max_points=2000)))[0]
    mol = label_mod.build_molecule(row["Z"], row["R"].astype(np.float64), "6-31g*", 0, None)
    mf = label_mod._run_scf(mol, LabelSettings())
    ours = esp_at(mol, mf.make_rdm1(), row["grid"].astype(np.float64) / U.Bohr) * U.Hartree
    kcal = U.kcal / U.mol
    rmse = np.sqrt(np.mean((ours - row["esp"]) ** 2)) / kcal
    assert np.sqrt(np.mean(row["esp"] ** 2)) / kcal > 15 and rmse < 2.5


def test_stride_and_max_structures_pick_every_kth_structure(tmp_path):
    import ase.io
    from ase.build import molecule

    from mmlwf.label import label_structures
    from mmlwf.packed import PackedDataset

    frames = []
    for k in range(5):
        atoms = molecule("H2")
        atoms.positions[1, 2] += 0.02 * k
        frames.append(atoms)
    ase.io.write(tmp_path / "h2.xyz", frames)
    out = label_structures([tmp_path / "h2.xyz"], tmp_path / "out", basis="sto-3g", stride=2, max_structures=2,
                           threads=1)
    ds = PackedDataset(out)
    assert len(ds) == 2
    assert np.allclose([ds[0]["R"][1, 2], ds[1]["R"][1, 2]], frames[0].positions[1, 2] + np.array([0.0, 0.04]),
                       atol=1e-6)
