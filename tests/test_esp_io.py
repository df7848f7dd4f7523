"""ESP data in: cube files (against pyscf's cube writer), point selection, grid+ESP pairs,
DCMNet-style NPZ, ESP-only datasets, and one-line errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units as U
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlwf.cli import main
from mmlwf.convert import convert
from mmlwf.errors import ConfigError, DataError
from mmlwf.esp.points import PointSettings, outside_mask, radii, select
from mmlwf.io import open_source
from mmlwf.io.cube import CubeSource, read_cube
from mmlwf.io.dcmnet_npz import infer_n_grid
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure

from .conftest import SHARED_DATA

ESP_DIR = SHARED_DATA / "esp"
WATER_ANG = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


def _esp_file(name: str):
    path = ESP_DIR / name
    if not path.exists():
        pytest.skip(f"reference data {path} not present (../shared/data is not beside the repo)")
    return path


# ----------------------------------------------------------------------------- cube vs pyscf


@pytest.fixture(scope="module")
def pyscf_cube(tmp_path_factory):
    """Water HF/STO-3G: pyscf's own cubegen.mep cube (Bohr, Hartree/e) and its values."""
    from pyscf import gto, scf
    from pyscf.tools import cubegen

    mol = gto.M(atom=[(8, r) for r in WATER_ANG[:1]] + [(1, r) for r in WATER_ANG[1:]],
                unit="Angstrom", basis="sto-3g", verbose=0)
    mf = scf.RHF(mol).run()
    path = tmp_path_factory.mktemp("cube") / "mep.cube"
    mep = cubegen.mep(mol, str(path), mf.make_rdm1(), nx=14, ny=13, nz=12)
    coords = cubegen.Cube(mol, 14, 13, 12).get_coords()  # Bohr, in the cube's value order
    return path, mol, mep, coords


def test_cube_reader_matches_pyscf_cubegen(pyscf_cube):
    path, mol, mep, coords = pyscf_cube
    cube = read_cube(path)
    assert cube.unit == "Bohr" and cube.values.shape == (14, 13, 12)
    np.testing.assert_array_equal(cube.Z, [8, 1, 1])
    np.testing.assert_allclose(cube.R, mol.atom_coords(), atol=2e-6)  # cube writes 6 decimals
    np.testing.assert_allclose(cube.points(), coords, atol=1e-5)
    np.testing.assert_allclose(cube.values, mep, rtol=1e-5, atol=1e-10)  # %.5E in the file


def test_cube_conversion_units_and_selection(pyscf_cube, tmp_path):
    path, mol, mep, coords = pyscf_cube
    out = convert([path], tmp_path / "ds")
    ds = PackedDataset(out)
    row = ds[0]
    assert "E" not in ds.fields  # a cube carries no energy
    np.testing.assert_allclose(row["R"], mol.atom_coords() * U.Bohr, atol=1e-5)  # Å
    grid = row["grid"].astype(np.float64)
    # every stored point is a cubegen point (Bohr -> Å) with its value (Hartree/e -> V)
    d = np.linalg.norm(grid[:, None, :] - coords[None, :, :] * U.Bohr, axis=-1)
    match = d.argmin(axis=1)
    assert d.min(axis=1).max() < 1e-4
    np.testing.assert_allclose(row["esp"], mep.reshape(-1)[match] * U.Hartree, rtol=2e-5, atol=1e-6)
    # exactly the points of the 1.4-2.0 vdW shell are kept
    assert row["Z"].tolist() == [8, 1, 1]
    expected = select(coords * U.Bohr, row["Z"], mol.atom_coords() * U.Bohr, PointSettings())
    assert sorted(match.tolist()) == expected.tolist()


def _write_cube(path, counts, axes, values, natoms=1, nval=None, atoms=((8, 0.0, 0.0, 0.0),)):
    lines = ["comment", "comment",
             f"{natoms} 0.5 -0.25 0.0" + (f" {nval}" if nval is not None else "")]
    lines += [f"{n} {a[0]} {a[1]} {a[2]}" for n, a in zip(counts, axes)]
    lines += [f"{z} {float(z)} {x} {y} {w}" for z, x, y, w in atoms]
    lines += [" ".join(f"{v:.6e}" for v in values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cube_non_orthogonal_axes_and_angstrom_variant(tmp_path):
    axes = np.array([[0.3, 0.0, 0.0], [0.1, 0.4, 0.0], [0.05, 0.02, 0.5]])
    values = np.arange(2 * 3 * 4, dtype=float)
    c = read_cube(_write_cube(tmp_path / "skew.cube", (2, 3, 4), axes, values))
    pts = c.points()
    # value (i, j, k) sits at origin + i a0 + j a1 + k a2, the last index fastest
    i, j, k = 1, 2, 3
    flat = (i * 3 + j) * 4 + k
    np.testing.assert_allclose(pts[flat], np.array([0.5, -0.25, 0.0]) + i * axes[0] + j * axes[1] + k * axes[2])
    assert c.values.reshape(-1)[flat] == flat
    ang = read_cube(_write_cube(tmp_path / "ang.cube", (-2, -3, -4), axes, values))
    assert ang.unit == "Angstrom" and c.unit == "Bohr"
    assert CubeSource(tmp_path / "ang.cube").units.length == "Angstrom"
    assert CubeSource(tmp_path / "skew.cube").units.length == "Bohr"


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        (dict(natoms=-1), "header", "orbital cube"),
        (dict(nval=2), "header", "values per grid point"),
        (dict(values=np.zeros(5)), "values", "truncated"),
    ],
)
def test_bad_cubes_one_line_errors(tmp_path, kwargs, field, words):
    values = kwargs.pop("values", np.zeros(8))
    path = _write_cube(tmp_path / "bad.cube", (2, 2, 2), np.eye(3) * 0.2, values, **kwargs)
    with pytest.raises(DataError) as exc:
        read_cube(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and f"field '{field}'" in msg and words in msg


def test_cli_bad_cube_exits_with_one_line(tmp_path, capsys):
    path = _write_cube(tmp_path / "t.cube", (2, 2, 2), np.eye(3) * 0.2, np.zeros(3))
    code = main(["convert", str(path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "t.cube: field 'values'" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- point selection

_ELEMENTS = [1, 6, 7, 8, 9, 16, 17]


@settings(max_examples=40, deadline=None)
@given(
    n_atoms=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    inner=st.floats(0.8, 1.6),
    width=st.floats(0.2, 1.0),
)
def test_selection_keeps_only_points_outside_the_molecule(n_atoms, seed, inner, width):
    rng = np.random.default_rng(seed)
    Z = rng.choice(_ELEMENTS, n_atoms)
    R = rng.uniform(-2.0, 2.0, (n_atoms, 3))
    pts = rng.uniform(-7.0, 7.0, (3000, 3))
    ps = PointSettings(inner=inner, outer=inner + width)
    keep = select(pts, Z, R, ps)
    d = np.linalg.norm(pts[:, None, :] - R[None], axis=-1) / radii(Z)[None, :]
    kept = np.zeros(len(pts), bool)
    kept[keep] = True
    assert np.all(d[kept] >= inner)  # outside every scaled sphere
    assert np.all(d[kept].min(axis=1) <= inner + width)  # inside the outer shell
    # and nothing that qualifies is dropped
    assert not np.any(~kept & (d.min(axis=1) >= inner) & (d.min(axis=1) <= inner + width))
    # the density rule also keeps points outside the molecule only
    rho = rng.uniform(0, 2e-3, len(pts))
    dens = select(pts, Z, R, PointSettings(mode="density", inner=inner), density=rho)
    assert np.all(d[dens] >= inner) and np.all((rho[dens] >= 1e-4) & (rho[dens] <= 1e-3))


def test_subsampling_is_deterministic_and_bounded():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-5, 5, (5000, 3))
    ps = PointSettings(max_points=50, seed=3)
    a = select(pts, [8], [[0, 0, 0]], ps, index=0)
    assert a.shape == (50,) and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, select(pts, [8], [[0, 0, 0]], ps, index=0))
    assert not np.array_equal(a, select(pts, [8], [[0, 0, 0]], ps, index=1))
    assert set(a) <= set(select(pts, [8], [[0, 0, 0]], PointSettings()))


def test_point_settings_reject_bad_values():
    for bad in (dict(mode="surface"), dict(inner=2.0, outer=1.5), dict(density_window=(1e-3, 1e-4)),
                dict(max_points=0), dict(spacing=0)):
        with pytest.raises(ConfigError):
            PointSettings(**bad)
    with pytest.raises(DataError, match="no van der Waals radius for atomic number 0"):
        radii([0])
    assert outside_mask([[0, 0, 3.0]], [8], [[0, 0, 0]], 1.4).tolist() == [True]
    assert outside_mask([[0, 0, 2.0]], [8], [[0, 0, 0]], 1.4).tolist() == [False]


# ----------------------------------------------------------------------------- real cubes


@pytest.mark.parametrize("tag", ["", "-acute", "-obtuse"])
def test_real_cubes_convert_and_validate(tmp_path, tag):
    from mmlwf.validate import validate_dataset

    pot, dens = _esp_file(f"h2o-pot{tag}.cube"), _esp_file(f"h2o-dens{tag}.cube")
    out = convert([pot], tmp_path / "ds", density=[dens])
    report = validate_dataset(out)
    assert report.ok, [f.one_line() for f in report.findings]
    row = PackedDataset(out)[0]
    cube, dcube = read_cube(pot), read_cube(dens)
    np.testing.assert_allclose(row["R"], cube.R * U.Bohr, atol=1e-5)
    grid = row["grid"].astype(np.float64)
    d = np.linalg.norm(grid[:, None] - row["R"][None], axis=-1) / radii(row["Z"])[None]
    assert np.all(d >= 1.0 - 1e-6) and 500 < grid.shape[0] < 20000
    # density of every kept point in the window: look it up on the cube grid
    ijk = np.rint(np.linalg.solve(cube.axes.T, (grid / U.Bohr - cube.origin).T).T).astype(int)
    rho = dcube.values[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert np.all((rho >= 1e-4) & (rho <= 1e-3))
    np.testing.assert_allclose(row["esp"], cube.values[ijk[:, 0], ijk[:, 1], ijk[:, 2]] * U.Hartree, rtol=1e-6)
    # the shell rule with subsampling, through the CLI
    code = main(["convert", str(pot), "-o", str(tmp_path / "shell"), "--max-points", "400", "--seed", "2"])
    assert code == 0 and PackedDataset(tmp_path / "shell")[0]["esp"].shape == (400,)


def test_density_cube_must_match_grid(tmp_path):
    pot = _esp_file("h2o-pot.cube")
    other = _write_cube(tmp_path / "d.cube", (2, 2, 2), np.eye(3) * 0.2, np.zeros(8))
    with pytest.raises(DataError, match="d.cube: field 'grid'"):
        convert([pot], tmp_path / "ds", density=[other])
    with pytest.raises(ConfigError, match="--density given 2"):
        convert([pot], tmp_path / "ds", density=[other, other])
    with pytest.raises(DataError, match="needs a density cube"):
        convert([pot], tmp_path / "ds", points=PointSettings(mode="density"))


# ----------------------------------------------------------------------------- grid + ESP pairs


@pytest.fixture
def geometry(tmp_path):
    import ase.io
    from ase import Atoms

    path = tmp_path / "water.xyz"
    ase.io.write(path, Atoms("OH2", positions=WATER_ANG))
    return path


def _grid_points(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-4, 4, (n, 3)), rng.normal(0, 0.02, n)


def test_esp_grid_text_in_bohr_and_hartree(tmp_path, geometry):
    grid, esp = _grid_points()
    path = tmp_path / "grid.txt"
    np.savetxt(path, np.column_stack([grid, esp]), header="x y z esp (Bohr, Hartree/e)")
    out = convert([path], tmp_path / "ds", geometry=[geometry], length_unit="Bohr")
    row = PackedDataset(out)[0]
    np.testing.assert_allclose(row["R"], WATER_ANG, atol=1e-6)  # the geometry stays in Å
    np.testing.assert_allclose(row["grid"], grid * U.Bohr, rtol=1e-6)
    np.testing.assert_allclose(row["esp"], esp * U.Hartree, rtol=1e-6)


def test_esp_grid_npy_forms(tmp_path, geometry):
    grid, esp = _grid_points()
    np.save(tmp_path / "g4.npy", np.column_stack([grid, esp]))
    np.save(tmp_path / "g3.npy", grid)
    np.save(tmp_path / "v.npy", esp)
    a = PackedDataset(convert([tmp_path / "g4.npy"], tmp_path / "a", geometry=[geometry], esp_unit="V"))[0]
    b = PackedDataset(convert([tmp_path / "g3.npy"], tmp_path / "b", geometry=[geometry],
                              esp_values=[tmp_path / "v.npy"], esp_unit="V", total_charge=-1))[0]
    for row in (a, b):
        np.testing.assert_allclose(row["grid"], grid, rtol=1e-6)
        np.testing.assert_allclose(row["esp"], esp, rtol=1e-6)
    assert b["Qtot"] == -1.0 and a["Qtot"] == 0.0
    with pytest.raises(DataError, match="g3.npy: field 'esp'.*no ESP file"):
        convert([tmp_path / "g3.npy"], tmp_path / "c", geometry=[geometry])
    np.save(tmp_path / "v_short.npy", esp[:-1])
    with pytest.raises(DataError, match="v_short.npy: field 'esp': structure 0: 19 ESP values for 20"):
        convert([tmp_path / "g3.npy"], tmp_path / "c", geometry=[geometry], esp_values=[tmp_path / "v_short.npy"])
    with pytest.raises(DataError, match="needs its geometry"):
        convert([tmp_path / "g4.npy"], tmp_path / "c")
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- DCMNet NPZ


def _dcmnet_npz(path, *, mono=True, n_grid=True, pad=0.0):
    rng = np.random.default_rng(0)
    n, width, gmax = 3, 4, 10
    Z = np.array([[8, 1, 1, 0], [6, 8, 1, 1], [8, 1, 1, 0]])
    N = (Z > 0).sum(axis=1)
    R = rng.normal(0, 1, (n, width, 3)) * (Z > 0)[..., None]
    counts = np.array([10, 6, 3])
    grid = np.full((n, gmax, 3), pad)
    esp = np.full((n, gmax), pad)
    for i, g in enumerate(counts):
        grid[i, :g] = rng.uniform(-4, 4, (g, 3))
        esp[i, :g] = rng.normal(0, 0.02, g)
    arrays = dict(R=R, Z=Z, N=N, esp=esp, vdw_surface=grid, Dxyz=rng.normal(0, 1, (n, 3)))
    if mono:
        arrays["mono"] = rng.normal(0, 0.3, (n, width)) * (Z > 0)
    if n_grid:
        arrays["n_grid"] = counts
    np.savez(path, **arrays)
    return arrays, counts


@pytest.mark.parametrize("n_grid, pad", [(True, 0.0), (False, 0.0), (False, np.nan)])
def test_dcmnet_npz(tmp_path, n_grid, pad):
    arrays, counts = _dcmnet_npz(tmp_path / "d.npz", n_grid=n_grid, pad=pad)
    assert open_source(tmp_path / "d.npz").format == "dcmnet-npz"  # detected from the keys
    ds = PackedDataset(convert([tmp_path / "d.npz"], tmp_path / "ds"))
    assert len(ds) == 3 and "E" not in ds.fields
    np.testing.assert_array_equal(np.diff(ds.grid_offsets), counts)
    for i in range(3):
        row, k, g = ds[i], int(arrays["N"][i]), counts[i]
        np.testing.assert_allclose(row["q"], arrays["mono"][i, :k], rtol=1e-6)
        np.testing.assert_allclose(row["D"], arrays["Dxyz"][i], rtol=1e-6)
        np.testing.assert_allclose(row["grid"], arrays["vdw_surface"][i, :g], rtol=1e-6)
        np.testing.assert_allclose(row["esp"], arrays["esp"][i, :g] * U.Hartree, rtol=1e-6)


def test_dcmnet_npz_missing_mono_warns_and_zero_fills(tmp_path, caplog):
    _dcmnet_npz(tmp_path / "d.npz", mono=False)
    with caplog.at_level("WARNING", logger="mmlwf.io.dcmnet_npz"):
        ds = PackedDataset(convert([tmp_path / "d.npz"], tmp_path / "ds"))
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'd.npz'}: field 'mono': no atomic monopoles in the file: stored as zeros"]
    assert np.all(ds.arrays["q"] == 0) and ds.arrays["q"].shape == (10,)


def test_dcmnet_npz_alias_and_errors(tmp_path):
    arrays, _ = _dcmnet_npz(tmp_path / "d.npz")
    arrays["esp_grid"] = arrays.pop("vdw_surface")
    np.savez(tmp_path / "alias.npz", **arrays)
    assert len(PackedDataset(convert([tmp_path / "alias.npz"], tmp_path / "a"))) == 3
    bad = dict(arrays, n_grid=np.array([10, 11, 3]))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(DataError, match="bad.npz: field 'n_grid': structure 1: n_grid = 11 outside 1..10"):
        convert([tmp_path / "bad.npz"], tmp_path / "b", fmt="dcmnet-npz")
    empty = dict(arrays)
    empty.pop("n_grid")
    empty["esp"] = empty["esp"].copy()
    empty["esp"][2] = 0.0
    empty["esp_grid"] = empty["esp_grid"].copy()
    empty["esp_grid"][2] = 0.0
    np.savez(tmp_path / "empty.npz", **empty)
    with pytest.raises(DataError, match="empty.npz: field 'n_grid': structure 2: no grid points"):
        convert([tmp_path / "empty.npz"], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_infer_n_grid_keeps_interior_zeros():
    grid = np.array([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0], [0, 0, 0]])
    esp = np.array([0.1, 0.0, 0.2, 0.0])
    assert infer_n_grid(grid, esp) == 3


# ----------------------------------------------------------------------------- ESP-only datasets


def test_esp_only_dataset_has_no_energy_and_mixing_is_refused(tmp_path):
    grid, esp = _grid_points(5)
    with_esp = Structure(Z=np.array([8, 1, 1]), R=WATER_ANG, grid=grid, esp=esp).checked("x", require_energy=False)
    with PackedWriter(tmp_path / "ok") as w:
        w.add(with_esp)
        w.add(with_esp)
    assert "E" not in PackedDataset(tmp_path / "ok").fields
    with pytest.raises(DataError, match="lacks 'E'"):
        with PackedWriter(tmp_path / "mixed") as w:
            w.add(Structure(Z=np.array([8, 1, 1]), R=WATER_ANG, E=-1.0, grid=grid, esp=esp))
            w.add(with_esp)
    assert not (tmp_path / "mixed").exists()
    # without a grid, a missing energy is still an error
    with pytest.raises(DataError, match="missing energy"):
        with PackedWriter(tmp_path / "noE") as w:
            w.add(Structure(Z=np.array([8, 1, 1]), R=WATER_ANG))


def test_convert_flags_for_the_wrong_format(tmp_path, geometry):
    _dcmnet_npz(tmp_path / "d.npz")
    with pytest.raises(ConfigError, match="--density applies to cube sources"):
        convert([tmp_path / "d.npz"], tmp_path / "x", density=[geometry])
