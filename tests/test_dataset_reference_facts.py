"""Dataset reference facts: dipoles stored about the centroid (converted from the source's point)
and whether the reference energies include dispersion, recorded in the manifest."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mmlwf.convert import convert
from mmlwf.dipoles import dipoles_about_centroid, reference_points
from mmlwf.errors import ConfigError
from mmlwf.packed import PackedDataset

# NH4+ with point charges (e): total +1
Z = np.array([7, 1, 1, 1, 1])
R = np.array([[0.1, 0.2, -0.1], [1.1, 0.3, 0.0], [-0.3, 1.2, 0.1], [-0.2, -0.3, 0.9], [-0.1, -0.2, -1.0]]) + [3, -2, 5]
q = np.array([-0.6, 0.4, 0.4, 0.4, 0.4])


def _point(name: str, R: np.ndarray) -> np.ndarray:
    return reference_points(name, Z, R, np.array([len(Z)]))[0]


def _write(path, R, point: str, n: int = 1):
    """``n`` copies of the charged molecule with its point-charge dipole about ``point``."""
    frames = []
    for _ in range(n):
        a = Atoms(numbers=Z, positions=R)
        a.info["charge"] = 1.0
        a.calc = SinglePointCalculator(a, energy=-1.0, dipole=(q[:, None] * (R - _point(point, R))).sum(axis=0))
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return path


def test_the_conversion_formula_at_point_charges():
    D_origin = (q[:, None] * R).sum(axis=0)
    centroid = R.mean(axis=0)
    expected = (q[:, None] * (R - centroid)).sum(axis=0)
    got = dipoles_about_centroid(D_origin[None], np.array([1.0]), Z, R, np.array([5]), "origin")[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert not np.allclose(D_origin, expected)  # a charged molecule: the point matters
    # several molecules at once, centre of mass as the source's point
    com = _point("center_of_mass", R)
    D_com = (q[:, None] * (R - com)).sum(axis=0)
    got2 = dipoles_about_centroid(np.stack([D_com, D_com]), np.array([1.0, 1.0]), np.concatenate([Z, Z]),
                                  np.concatenate([R, R]), np.array([5, 5]), "center_of_mass")
    np.testing.assert_allclose(got2, [expected, expected], atol=1e-12)


@pytest.mark.parametrize("point", ["origin", "center_of_mass", "centroid"])
def test_a_charged_molecules_dipole_is_stored_about_the_centroid(tmp_path, point):
    ds = PackedDataset(convert([_write(tmp_path / "m.xyz", R, point)], tmp_path / "ds", dipole_reference=point))
    expected = (q[:, None] * (R - R.mean(axis=0))).sum(axis=0)
    np.testing.assert_allclose(ds.arrays["D"][0], expected, atol=1e-5)
    assert ds.manifest["dipole_reference"] == "centroid" and ds.dipole_reference == "centroid"
    assert ds.manifest["sources"][0]["dipole_reference"] == point


def test_translation_leaves_the_stored_dipole_unchanged(tmp_path):
    a = convert([_write(tmp_path / "a.xyz", R, "origin")], tmp_path / "a")  # origin: the default
    b = convert([_write(tmp_path / "b.xyz", R + [10.0, -7.0, 4.0], "origin")], tmp_path / "b")
    Da, Db = PackedDataset(a).arrays["D"][0], PackedDataset(b).arrays["D"][0]
    np.testing.assert_allclose(Da, Db, atol=1e-5)


def test_block_and_structure_paths_store_the_same_bytes(tmp_path):
    """NPZ sources go block-wise, an extxyz structure by structure: the same dipoles either way."""
    k = 4
    rng = np.random.default_rng(0)
    Rs = R[None] + rng.normal(scale=0.05, size=(k, 5, 3))
    D = np.stack([(q[:, None] * r).sum(axis=0) for r in Rs])
    frames = []
    for r, d in zip(Rs, D):
        a = Atoms(numbers=Z, positions=r)
        a.info["charge"] = 1.0
        a.calc = SinglePointCalculator(a, energy=-1.0, dipole=d)
        frames.append(a)
    ase.io.write(tmp_path / "m.xyz", frames, format="extxyz")
    back = ase.io.read(tmp_path / "m.xyz", index=":")  # the same numbers in both files (extxyz rounds)
    Rs, D = np.stack([a.positions for a in back]), np.stack([a.calc.results["dipole"] for a in back])
    np.savez(tmp_path / "m.npz", R=Rs, Z=np.tile(Z, (k, 1)), E=-np.ones(k), D=D, Q=np.ones(k))
    blocks = PackedDataset(convert([tmp_path / "m.npz"], tmp_path / "a")).arrays["D"]
    single = PackedDataset(convert([tmp_path / "m.xyz"], tmp_path / "b")).arrays["D"]
    np.testing.assert_array_equal(np.asarray(blocks), np.asarray(single))
    np.testing.assert_allclose(blocks, [(q[:, None] * (r - r.mean(axis=0))).sum(axis=0) for r in Rs], atol=1e-5)


def test_includes_dispersion_is_recorded_default_false(tmp_path):
    src = _write(tmp_path / "m.xyz", R, "origin")
    plain = PackedDataset(convert([src], tmp_path / "a"))
    assert plain.manifest["includes_dispersion"] is False and plain.includes_dispersion is False
    d3 = PackedDataset(convert([src], tmp_path / "b", dispersion=True))
    assert d3.includes_dispersion is True
    # a dataset that does not record it: false (the documented default)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del manifest["includes_dispersion"]
    d3.manifest = manifest
    assert d3.includes_dispersion is False


def test_a_packed_source_keeps_its_records_and_refuses_contradictions(tmp_path):
    src = _write(tmp_path / "m.xyz", R, "origin")
    a = convert([src], tmp_path / "a", dispersion=True)
    again = PackedDataset(convert([a], tmp_path / "b"))  # the records carry over, the dipole is not moved twice
    assert again.includes_dispersion is True
    np.testing.assert_array_equal(np.asarray(again.arrays["D"]), np.asarray(PackedDataset(a).arrays["D"]))
    with pytest.raises(ConfigError, match="--dispersion False contradicts"):
        convert([a], tmp_path / "c", dispersion=False)
    with pytest.raises(ConfigError, match="--dipole-reference origin contradicts"):
        convert([a], tmp_path / "c", dipole_reference="origin")
    with pytest.raises(ConfigError, match="state it with --dispersion"):
        convert([a, src], tmp_path / "c")


def test_cli_options(tmp_path):
    from mmlwf.cli import main

    src = _write(tmp_path / "m.xyz", R, "center_of_mass")
    assert main(["convert", str(src), "-o", str(tmp_path / "a"), "--dispersion",
                 "--dipole-reference", "center_of_mass"]) == 0
    ds = PackedDataset(tmp_path / "a")
    assert ds.includes_dispersion is True
    np.testing.assert_allclose(ds.arrays["D"][0], (q[:, None] * (R - R.mean(axis=0))).sum(axis=0), atol=1e-5)
    assert main(["convert", str(src), "-o", str(tmp_path / "b"), "--no-dispersion"]) == 0
    assert PackedDataset(tmp_path / "b").includes_dispersion is False


def test_workflow_dataset_settings_reach_the_converter():
    from mmlwf.settings import DatasetSettings
    from mmlwf.settings.base import parse
    from mmlwf.steps import convert_options

    ds = parse(DatasetSettings, {"sources": ["a.xyz"], "dispersion": True, "dipole_reference": "center_of_mass"})
    o = convert_options({k: getattr(ds, k) for k in ("dispersion", "dipole_reference")})
    assert o.dispersion is True and o.dipole_reference == "center_of_mass"
    assert parse(DatasetSettings, {"sources": ["a.xyz"]}).dispersion is None  # null: packed record, else false
    with pytest.raises(ConfigError, match="dipole_reference"):
        parse(DatasetSettings, {"sources": ["a.xyz"], "dipole_reference": "nucleus"})
