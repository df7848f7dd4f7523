import json

import numpy as np
import pytest

from mmlwf.cli import main
from mmlwf.packed import PackedWriter
from mmlwf.split import split_dataset
from mmlwf.stats import compute_stats


def test_hand_computed_case(tmp_path):
    # H2, O2, H2O, OH: four compositions, two elements: a least-squares fit with residuals
    from mmlwf.structure import Structure

    mols = [
        ([1, 1], -1.0, [[0, 0, 0], [0, 0, 0.74]]),
        ([8, 8], -10.0, [[0, 0, 0], [0, 0, 1.21]]),
        ([8, 1, 1], -10.5, [[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]]),
        ([8, 1], -5.5, [[0, 0, 0], [0, 0, 0.97]]),
    ]
    F = 0.3
    with PackedWriter(tmp_path / "ds") as w:
        for i, (Z, E, R) in enumerate(mols):
            w.add(Structure(Z=np.array(Z), R=np.array(R, float), E=E, F=np.full((len(Z), 3), F), index=i).checked("m"))
    np.savez(tmp_path / "s.npz", train=np.arange(4), valid=np.zeros(0, int), test=np.zeros(0, int),
             n_molecules=4, seed=0, group_by="none")
    st = compute_stats(tmp_path / "ds", tmp_path / "s.npz")
    counts = np.array([[2, 0], [0, 2], [2, 1], [1, 1]], float)
    E = np.array([m[1] for m in mols])
    ref = np.linalg.lstsq(counts, E, rcond=None)[0]
    assert st["element_energies"]["H"] == pytest.approx(ref[0], abs=1e-6)
    assert st["element_energies"]["O"] == pytest.approx(ref[1], abs=1e-6)
    resid = (E - counts @ ref) / counts.sum(axis=1)
    assert st["energy_residual_per_atom"]["std"] == pytest.approx(resid.std(), abs=1e-6)
    assert st["force_rms"] == pytest.approx(F)
    assert st["n_atoms"]["histogram"] == {"2": 3, "3": 1}
    # batch shapes are the loader's: the stats neither count neighbours nor claim budgets
    # (the neighbour counts and budgets of this case: test_batch_shapes.py)
    assert "neighbours" not in st and "batching" not in st


def test_only_the_training_split_is_used(tmp_path):
    from mmlwf.structure import Structure

    with PackedWriter(tmp_path / "ds") as w:
        for i in range(20):
            E = -1.0 if i < 10 else -1000.0  # the last ten would dominate the fit if used
            w.add(Structure(Z=np.array([1, 1]), R=np.array([[0, 0, 0], [0, 0, 0.74]]), E=E, index=i).checked("m"))
    np.savez(tmp_path / "s.npz", train=np.arange(10), valid=np.arange(10, 15), test=np.arange(15, 20),
             n_molecules=20, seed=0, group_by="none")
    st = compute_stats(tmp_path / "ds", tmp_path / "s.npz")
    assert st["n_train"] == 10 and st["element_energies"]["H"] == pytest.approx(-0.5, abs=1e-6)
    assert "force_rms" not in st


def test_cli_stats_on_real_data(tmp_path):
    from .conftest import shared_file
    from mmlwf.convert import convert

    ds = convert([shared_file("rmd17_aspirin_train.xyz")], tmp_path / "ds")
    split_dataset(ds, tmp_path / "s.npz", valid=0.1, test=0.1)
    assert main(["stats", str(ds), "--split", str(tmp_path / "s.npz"), "-o", str(tmp_path / "st.json")]) == 0
    st = json.loads((tmp_path / "st.json").read_text())
    assert st["n_train"] == 960 and set(st["element_energies"]) == {"H", "C", "O"}
    # aspirin at 5 Å keeps about 72 % of the 21*20 ordered pairs (the loader's count)
    from mmlwf.batching import molecule_sizes
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split

    sizes = molecule_sizes(PackedDataset(ds), load_split(tmp_path / "s.npz").train, 5.0)
    assert 0.6 < sizes[:, 2].sum() / (sizes[:, 1] * (sizes[:, 1] - 1)).sum() < 0.85
    assert st["energy_residual_per_atom"]["std"] < 0.05  # eV/atom after the per-element fit


def test_esp_only_dataset_has_esp_statistics_and_no_element_energies(tmp_path):
    from pathlib import Path

    from mmlwf.convert import convert
    from mmlwf.split import load_split, split_dataset

    esp = Path(__file__).resolve().parents[2] / "shared" / "data" / "esp"
    cubes = sorted(esp.glob("h2o-pot*.cube"))
    if not cubes:
        pytest.skip("../shared/data/esp is not beside the repository")
    packed = convert(cubes, tmp_path / "packed")
    split_dataset(packed, tmp_path / "split.npz", valid=0, test=1, seed=0)
    stats = compute_stats(packed, tmp_path / "split.npz")
    assert stats["element_energies"] == {} and "energy" not in stats
    assert stats["esp"]["grid_points_per_molecule"]["max"] > 500
    assert 0.1 < stats["esp"]["rms_V"] < 10.0
    # the loader's budgets carry the grid points
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedDataset

    loader = BatchLoader(PackedDataset(packed), load_split(tmp_path / "split.npz").train, cutoff=5.0)
    assert all(b.n_grid > 0 for b in loader.budgets)
