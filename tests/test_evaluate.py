"""``mmlwf evaluate``: metrics against hand-computed values, the per-structure table, and the
command on a tiny trained run (EMA weights, agreement with the training's own validation)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from mmlwf.analysis.evaluate import (
    KCAL_PER_MOL_PER_EV,
    compute_metrics,
    load_predictions,
    per_element_metrics,
    predictions_table,
    write_atom_predictions,
    write_predictions,
)
from mmlwf.cli import main

from .analysis_fixtures import K_E, N_ESP_TEST, N_ESP_VALID, N_TEST, N_VALID, trained_dcmnet, trained_run  # noqa: F401


@pytest.fixture
def pred():
    """Two structures (O and H2 atoms ... by hand), every quantity; see the expected values."""
    return {
        "index": np.array([7, 3]),
        "n_atoms": np.array([1, 2]),
        "Z": np.array([8, 1, 1]),
        "offsets": np.array([0, 1, 3]),
        "E_ref": np.array([1.0, 2.0]),
        "E_pred": np.array([1.5, 1.0]),
        "F_ref": np.zeros((3, 3)),
        "F_pred": np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]),
        "D_ref": np.zeros((2, 3)),
        "D_pred": np.array([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0]]),
        "Q_ref": np.array([0.0, 1.0]),
        "Q_pred": np.array([0.5, 1.0]),
        "q_ref": np.array([-0.5, 0.25, 0.25]),
        "q_pred": np.array([-0.5, 0.5, 0.0]),
        "esp_ref": np.zeros(4),
        "esp_pred": np.array([0.1, -0.1, 0.2, 0.0]),
        "grid_offsets": np.array([0, 3, 4]),
    }


def test_metrics_by_hand(pred):
    m = compute_metrics(pred)
    expected = {
        "n_structures": 2, "n_atoms": 3,
        # dE = (0.5, -1.0); per atom (0.5, -0.5)
        "energy_mae_eV": 0.75, "energy_rmse_eV": math.sqrt(0.625), "energy_max_abs_error_eV": 1.0,
        "energy_per_atom_mae_eV": 0.5, "energy_per_atom_rmse_eV": 0.5,
        # components |3 4 0 0 0 0 1 2 2|: sum 12, squares 34, over 9; vector norms (5, 0, 3)
        "forces_mae_eV_per_A": 12 / 9, "forces_rmse_eV_per_A": math.sqrt(34 / 9),
        "forces_norm_mae_eV_per_A": 8 / 3, "forces_norm_rmse_eV_per_A": math.sqrt(34 / 3),
        "forces_max_abs_error_eV_per_A": 4.0,
        "dipole_mae_eA": 0.3 / 6, "dipole_rmse_eA": math.sqrt(0.05 / 6),
        "dipole_norm_mae_eA": 0.15, "dipole_norm_rmse_eA": math.sqrt(0.025),
        "charge_mae_e": 0.25, "charge_rmse_e": math.sqrt(0.125),
        "mono_mae_e": 0.5 / 3, "mono_rmse_e": math.sqrt(0.125 / 3),
        "esp_mae_V": 0.1, "esp_rmse_V": math.sqrt(0.06 / 4),
        "esp_mae_kcal_per_mol_e": 0.1 * KCAL_PER_MOL_PER_EV,
        "esp_rmse_kcal_per_mol_e": math.sqrt(0.06 / 4) * KCAL_PER_MOL_PER_EV,
        "n_grid_points": 4,
    }
    assert set(m) == set(expected)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    assert 23.0605 < KCAL_PER_MOL_PER_EV < 23.0606  # 1 eV = 23.0605 kcal/mol


def test_per_element_by_hand(pred):
    el = per_element_metrics(pred)
    assert list(el) == ["H", "O"]  # by atomic number
    assert el["O"]["n_atoms"] == 1 and el["H"]["n_atoms"] == 2
    assert el["O"]["forces_mae_eV_per_A"] == pytest.approx(7 / 3)
    assert el["O"]["forces_rmse_eV_per_A"] == pytest.approx(math.sqrt(25 / 3))
    assert el["O"]["forces_norm_mae_eV_per_A"] == pytest.approx(5.0)
    assert el["H"]["forces_mae_eV_per_A"] == pytest.approx(5 / 6)
    assert el["H"]["forces_rmse_eV_per_A"] == pytest.approx(math.sqrt(1.5))
    assert el["H"]["forces_norm_mae_eV_per_A"] == pytest.approx(1.5)
    assert el["H"]["forces_norm_rmse_eV_per_A"] == pytest.approx(math.sqrt(4.5))
    assert el["H"]["mono_mae_e"] == pytest.approx(0.25)
    assert el["O"]["mono_mae_e"] == pytest.approx(0.0)


def test_table_by_hand(pred):
    t = predictions_table(pred)
    assert list(t["index"]) == [7, 3] and list(t["formula"]) == ["O", "H2"]
    assert np.allclose(t["E_error_eV"], [0.5, -1.0]) and np.allclose(t["E_error_per_atom_eV"], [0.5, -0.5])
    assert np.allclose(t["F_mae_eV_per_A"], [7 / 3, 5 / 6])
    assert np.allclose(t["F_rmse_eV_per_A"], [math.sqrt(25 / 3), math.sqrt(1.5)])
    assert np.allclose(t["F_max_norm_error_eV_per_A"], [5.0, 3.0])
    assert np.allclose(t["D_error_norm_eA"], [0.1, 0.2])
    assert np.allclose(t["esp_mae_V"], [0.4 / 3, 0.0]) and list(t["n_grid"]) == [3, 1]


def test_files_round_trip(pred, tmp_path):
    write_predictions(pred, tmp_path / "p.csv")
    write_atom_predictions(pred, tmp_path / "a.npz")
    got = compute_metrics(load_predictions(tmp_path / "p.csv", tmp_path / "a.npz"))
    want = compute_metrics(pred)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    other = dict(pred, index=np.array([7, 4]))
    write_atom_predictions(other, tmp_path / "b.npz")
    with pytest.raises(ValueError, match="structures differ"):
        load_predictions(tmp_path / "p.csv", tmp_path / "b.npz")


# ----------------------------------------------------------------------------- on a trained run


def _evaluate(t, out, *extra):
    return main(["evaluate", str(t.run), "--data", str(t.data), "--split", str(t.split), "-o", str(out), *extra])


def test_cli_writes_metrics_and_table(trained_run, tmp_path):  # noqa: F811
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split

    t = trained_run
    assert _evaluate(t, tmp_path / "m.json", "--predictions", str(tmp_path / "p.csv"),
                     "--atom-predictions", str(tmp_path / "a.npz")) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["subset"] == "test" and doc["model_type"] == "physnet" and doc["experiment"] == t.run.name
    assert doc["checkpoint"] == {"which": "best", "epoch": 2, "ema": True}
    assert doc["dataset"] == str(t.data) and doc["split"] == str(t.split)
    m = doc["metrics"]
    assert m["n_structures"] == N_TEST and m["n_atoms"] == 4 * N_TEST
    for key in ("energy_mae_eV", "forces_norm_rmse_eV_per_A", "dipole_mae_eA", "charge_mae_e"):
        assert np.isfinite(m[key]), key
    assert m["charge_mae_e"] < 1e-5  # the model's charges are constrained to the total charge
    assert set(doc["per_element"]) == {"H", "C", "O"}
    table = pd.read_csv(tmp_path / "p.csv")
    ds, test = PackedDataset(t.data), load_split(t.split).test
    assert len(table) == N_TEST and list(table["index"]) == list(test)
    assert set(table["formula"]) == {"CH2O"}
    assert np.allclose(table["E_ref_eV"], ds.arrays["E"][test])
    assert np.mean(np.abs(table["E_error_eV"])) == pytest.approx(m["energy_mae_eV"], rel=1e-8)
    assert np.sqrt(np.mean(table["D_error_norm_eA"] ** 2)) == pytest.approx(m["dipole_norm_rmse_eA"], rel=1e-8)
    back = compute_metrics(load_predictions(tmp_path / "p.csv", tmp_path / "a.npz"))
    assert back["forces_norm_mae_eV_per_A"] == pytest.approx(m["forces_norm_mae_eV_per_A"], rel=1e-12)


def test_valid_metrics_equal_the_trainings_validation(trained_run, tmp_path):  # noqa: F811
    """On the validation subset, evaluate's errors are those training logged for the best
    epoch, which it computed with the EMA weights: the same parameters and data."""
    t = trained_run
    assert _evaluate(t, tmp_path / "m.json", "--subset", "valid") == 0
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert m["n_structures"] == N_VALID
    history = pd.read_csv(t.run / "history.csv")
    best = history.loc[history["valid_loss"].idxmin()]
    for key in ("energy_mae_eV", "energy_rmse_eV", "forces_mae_eV_per_A", "forces_rmse_eV_per_A",
                "dipole_mae_eA", "dipole_rmse_eA"):
        assert m[key] == pytest.approx(best[f"valid_{key}"], rel=2e-4), key


def test_uses_the_ema_weights(trained_run):  # noqa: F811
    from mmlwf.analysis.evaluate import evaluate_run
    from mmlwf.analysis.predict import TrainedModel, load_run, predict
    from mmlwf.training.checkpoint import load_params

    t = trained_run
    _, pred = evaluate_run(t.run, t.data, t.split, subset="valid")
    run = load_run(t.run)
    raw = TrainedModel(run.model, load_params(t.run, "best", ema=False)[0], run.info, run.reference, run.run_dir)
    ema = TrainedModel(run.model, load_params(t.run, "best", ema=True)[0], run.info, run.reference, run.run_dir)
    idx = pred["index"]
    assert np.allclose(predict(ema, t.data, idx)["E_pred"], pred["E_pred"], rtol=0, atol=1e-9)
    assert not np.allclose(predict(raw, t.data, idx)["E_pred"], pred["E_pred"], rtol=0, atol=1e-6)


def test_subset_all_needs_no_split(trained_run, tmp_path):  # noqa: F811
    t = trained_run
    assert main(["evaluate", str(t.run), "--data", str(t.data), "--subset", "all", "-o", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["n_structures"] == 90


def test_bad_inputs_one_line(trained_run, tmp_path, capsys):  # noqa: F811
    t = trained_run
    # not a run directory
    assert main(["evaluate", str(tmp_path), "--data", str(t.data), "--split", str(t.split),
                 "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.json" in err and len(err.splitlines()) == 1
    # a split made for another dataset size
    with np.load(t.split, allow_pickle=False) as z:
        np.savez(tmp_path / "wrong.npz", **{**{k: z[k] for k in z.files}, "n_molecules": np.int64(7)})
    assert main(["evaluate", str(t.run), "--data", str(t.data), "--split", str(tmp_path / "wrong.npz"),
                 "-o", str(tmp_path / "m2.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrong.npz" in err and "n_molecules" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m2.json").exists()
    # an empty subset
    with np.load(t.split, allow_pickle=False) as z:
        np.savez(tmp_path / "empty.npz", **{**{k: z[k] for k in z.files}, "test": np.zeros(0, np.int64)})
    assert main(["evaluate", str(t.run), "--data", str(t.data), "--split", str(tmp_path / "empty.npz"),
                 "-o", str(tmp_path / "m4.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty.npz" in err and "'test' subset is empty" in err and len(err.splitlines()) == 1
    # test subset without a split
    assert main(["evaluate", str(t.run), "--data", str(t.data), "-o", str(tmp_path / "m3.json")]) == 2
    assert "--split" in capsys.readouterr().err


def test_cli_mixture_metrics_and_plots_as_the_rule_writes_them(trained_run, tmp_path, capsys):  # noqa: F811
    """``mmlwf evaluate`` with repeated --data/--split and --plots: the per-dataset metrics and
    the figures the workflow's evaluate rule writes (both call mmlwf.steps.evaluate_step)."""
    import shutil

    from mmlwf.analysis.plots import PLOT_FILES

    t = trained_run
    other = tmp_path / "copy"
    shutil.copytree(t.data, other)
    plots = tmp_path / "figs" / "plots"
    assert main(["evaluate", str(t.run), "--data", str(t.data), "--split", str(t.split), "--data", str(other),
                 "--split", str(t.split), "-o", str(tmp_path / "m.json"), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"wrote {tmp_path / 'm.json'}: {N_TEST} test structures")
    doc = json.loads((tmp_path / "m.json").read_text())
    assert set(doc["per_dataset"]) == {str(t.data), str(other)}
    for metrics in doc["per_dataset"].values():
        assert metrics["n_structures"] == N_TEST
        assert metrics["energy_mae_eV"] == pytest.approx(doc["metrics"]["energy_mae_eV"], rel=1e-9)
    assert sorted(p.name for p in plots.iterdir()) == sorted(PLOT_FILES["physnet"])
    assert not [p for p in plots.parent.iterdir() if p.name != "plots"]  # no temporary folder left
    # one split per dataset
    assert main(["evaluate", str(t.run), "--data", str(t.data), "--data", str(other), "--split", str(t.split),
                 "-o", str(tmp_path / "m2.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 dataset(s) but 1 split file(s)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m2.json").exists()


# ----------------------------------------------------------------------------- DCMNet


def test_dcmnet_cli_metrics_and_table(trained_dcmnet, tmp_path):  # noqa: F811
    t = trained_dcmnet
    assert _evaluate(t, tmp_path / "m.json", "--predictions", str(tmp_path / "p.csv"),
                     "--atom-predictions", str(tmp_path / "a.npz")) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    m = doc["metrics"]
    assert doc["model_type"] == "dcmnet" and doc["checkpoint"]["ema"] is True
    assert m["n_structures"] == N_ESP_TEST and m["n_grid_points"] == 50 * N_ESP_TEST
    assert "energy_mae_eV" not in m and "forces_mae_eV_per_A" not in m  # DCMNet has neither
    assert m["esp_rmse_kcal_per_mol_e"] == pytest.approx(m["esp_rmse_V"] * 23.0605, rel=1e-5)
    assert m["charge_mae_e"] < 1e-5 and np.isfinite(m["dipole_mae_eA"]) and np.isfinite(m["mono_mae_e"])
    assert set(doc["per_element"]) == {"H", "O"}
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == N_ESP_TEST and list(table["n_grid"]) == [50] * N_ESP_TEST
    assert set(table["formula"]) == {"H2O"}
    back = compute_metrics(load_predictions(tmp_path / "p.csv", tmp_path / "a.npz"))
    assert back["esp_mae_V"] == pytest.approx(m["esp_mae_V"], rel=1e-6)


def test_dcmnet_esp_is_the_coulomb_potential_of_its_charges(trained_dcmnet):  # noqa: F811
    """Each structure's predicted ESP equals k_e sum q/|r - p| of its own predicted charges:
    grid points, charges and structures stay matched through batching."""
    from mmlwf.analysis.evaluate import evaluate_run

    t = trained_dcmnet
    _, pred = evaluate_run(t.run, t.data, subset="all", batch_size=5)
    assert np.all(np.abs(pred["dcm_positions"] - pred["R"][:, None, :]).max(axis=-1) <= 0.5 + 1e-6)  # max_displacement
    for j in range(len(pred["index"])):
        a, b = pred["offsets"][j:j + 2]
        g0, g1 = pred["grid_offsets"][j:j + 2]
        q, pos = pred["dcm_charges"][a:b].ravel(), pred["dcm_positions"][a:b].reshape(-1, 3)
        r = np.linalg.norm(pred["grid"][g0:g1, None, :] - pos[None], axis=-1)
        assert np.allclose(pred["esp_pred"][g0:g1], K_E * (q / r).sum(axis=1), rtol=1e-4, atol=1e-5), j
        assert np.sum(q) == pytest.approx(0.0, abs=1e-5)  # neutral water


def test_dcmnet_valid_metrics_equal_the_trainings_validation(trained_dcmnet, tmp_path):  # noqa: F811
    t = trained_dcmnet
    assert _evaluate(t, tmp_path / "m.json", "--subset", "valid") == 0
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert m["n_structures"] == N_ESP_VALID
    best = pd.read_csv(t.run / "history.csv").pipe(lambda h: h.loc[h["valid_loss"].idxmin()])
    for key in ("esp_mae_kcal_per_mol_e", "esp_rmse_kcal_per_mol_e", "dipole_mae_eA", "mono_mae_e"):
        assert m[key] == pytest.approx(best[f"valid_{key}"], rel=2e-4), key
