"""Ensembles at inference (issue 16, points 2 and 3): the calculator's uncertainties against the
members evaluated one by one, the export round trip, evaluation spreads and calibration metrics,
the uncertainty figures and the report's calibration section; single models unchanged.

The ensemble is the tiny trained PhysNet of :mod:`tests.analysis_fixtures` made into three
perturbed members (:mod:`tests.ensemble_fixtures`), with spread scales 2 (energy) and 0.5 (forces).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from mmlwf.calculator import MMLWFCalculator
from mmlwf.errors import DataError

from .analysis_fixtures import trained_dcmnet, trained_run  # noqa: F401
from .ensemble_fixtures import ENSEMBLE_SIZE, SCALE, ensemble_run, member_models  # noqa: F401


def _formaldehyde(t, k: int = 0) -> Atoms:
    from mmlwf.packed import PackedDataset

    ds = PackedDataset(t.data)
    g = ds.gather(np.array([k]), fields=("Z", "R"))
    return Atoms(numbers=g["Z"], positions=g["R"])


def _results(calc, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    return dict(calc.results)


def test_calculator_uncertainty_matches_members(ensemble_run, trained_run):  # noqa: F811
    calc = MMLWFCalculator.from_run(ensemble_run.run)
    atoms = _formaldehyde(ensemble_run, 3)
    got = _results(calc, atoms)
    members = [_results(MMLWFCalculator(m), atoms) for m in member_models(calc.trained)]
    assert len(members) == ENSEMBLE_SIZE
    E = np.array([m["energy"] for m in members])
    F = np.stack([m["forces"] for m in members])  # (M, n, 3)
    assert np.std(E) > 2e-4 and np.std(F, axis=0).max() > 1e-4  # members differ
    # (the 2-epoch model's forces are ~1e-3 eV/Å: tolerances well below the spreads)
    np.testing.assert_allclose(got["energy"], E.mean(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(got["forces"], F.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["dipole"], np.mean([m["dipole"] for m in members], 0), atol=1e-5)
    np.testing.assert_allclose(got["energy_uncertainty"], SCALE["energy"] * np.std(E), rtol=1e-3, atol=5e-6)
    per_atom = np.sqrt(np.mean(np.sum((F - F.mean(0)) ** 2, axis=-1), axis=0))
    assert got["forces_uncertainty"].shape == (len(atoms),)
    np.testing.assert_allclose(got["forces_uncertainty"], SCALE["forces"] * per_atom, rtol=1e-3, atol=2e-7)
    assert {"energy_uncertainty", "forces_uncertainty"} <= set(calc.implemented_properties)
    atoms.calc = calc  # through ASE's property interface as well
    np.testing.assert_array_equal(calc.get_property("forces_uncertainty", atoms), got["forces_uncertainty"])


def test_single_model_has_no_uncertainty(trained_run):  # noqa: F811
    calc = MMLWFCalculator.from_run(trained_run.run)
    got = _results(calc, _formaldehyde(trained_run))
    assert calc.members == 1
    assert not {"energy_uncertainty", "forces_uncertainty"} & (set(got) | set(calc.implemented_properties))


def test_trained_model_forward_is_one_program(ensemble_run):  # noqa: F811
    """The ensemble forward gives means, raw spreads and the members' values at once."""
    from mmlwf.inference import jitted_forward, load_run

    run = load_run(ensemble_run.run)
    assert run.members == ENSEMBLE_SIZE and run.is_ensemble
    assert run.spread_scale("energy") == SCALE["energy"] and run.spread_scale("dipole") == 1.0
    assert run.forward is jitted_forward(run.model, ensemble=True)
    assert run.forward is not jitted_forward(run.model)
    assert jitted_forward(run.model) is jitted_forward(run.model, ensemble=False)  # one cache entry


def test_export_round_trip_of_an_ensemble(ensemble_run, trained_run, tmp_path):  # noqa: F811
    from mmlwf.export import ENSEMBLE_FORMAT_VERSION, FORMAT_VERSION, export_model, read_exported

    meta = export_model(ensemble_run.run, tmp_path / "ens.mmlwf")
    assert meta["format_version"] == ENSEMBLE_FORMAT_VERSION and meta["ensemble"]["size"] == ENSEMBLE_SIZE
    _, variables = read_exported(tmp_path / "ens.mmlwf")
    import jax

    assert all(leaf.shape[0] == ENSEMBLE_SIZE for leaf in jax.tree.leaves(variables))
    atoms = _formaldehyde(ensemble_run, 5)
    a, b = _results(MMLWFCalculator.from_run(ensemble_run.run), atoms), _results(
        MMLWFCalculator.from_file(tmp_path / "ens.mmlwf"), atoms)
    for key in ("energy", "forces", "energy_uncertainty", "forces_uncertainty", "dipole"):
        np.testing.assert_array_equal(a[key], b[key])
    single = export_model(trained_run.run, tmp_path / "one.mmlwf")
    assert single["format_version"] == FORMAT_VERSION and "ensemble" not in single


def test_export_refuses_ensemble_version_without_member_axis(ensemble_run, tmp_path):  # noqa: F811
    """A version-2 file whose model_info says one model (or a single-model file claiming
    members) is refused, not silently evaluated with the wrong forward."""
    from mmlwf.export import FORMAT, content_sha256, export_model
    from mmlwf.fileio import save_npz_deterministic

    export_model(ensemble_run.run, tmp_path / "ens.mmlwf")
    with np.load(tmp_path / "ens.mmlwf") as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    info = dict(meta["model_info"])
    info["ensemble"] = {**info["ensemble"], "size": ENSEMBLE_SIZE + 1}
    paths = meta["paths"]
    meta |= {"model_info": info, "format": FORMAT,
             "sha256": content_sha256(info, paths, [arrays[f"p{k:05d}"] for k in range(len(paths))])}
    save_npz_deterministic(tmp_path / "bad.mmlwf",
                           arrays | {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(DataError, match="ensemble of 4 members"):
        MMLWFCalculator.from_file(tmp_path / "bad.mmlwf")


@pytest.fixture(scope="module")
def evaluated(ensemble_run):  # noqa: F811
    from mmlwf.analysis.evaluate import evaluate_run

    return evaluate_run(ensemble_run.run, ensemble_run.data, ensemble_run.split, subset="test")


def test_evaluate_writes_spreads_and_calibration(evaluated, ensemble_run, tmp_path):  # noqa: F811
    from mmlwf.analysis.calibration import calibration_metrics
    from mmlwf.analysis.evaluate import load_predictions, write_atom_predictions, write_predictions

    doc, pred = evaluated
    k, A = len(pred["index"]), len(pred["F_pred"])
    assert pred["E_spread"].shape == (k,) and pred["F_spread"].shape == (A,) and pred["D_spread"].shape == (k,)
    assert np.all(pred["E_spread"] > 0) and np.all(pred["F_spread"] > 0)
    cal = doc["calibration"]
    assert cal["members"] == ENSEMBLE_SIZE and cal["spread_scale"]["energy"] == SCALE["energy"]
    dF = pred["F_pred"] - pred["F_ref"]
    assert cal["raw"] == pytest.approx(calibration_metrics(dF, pred["F_spread"], "forces", "eV_per_A")
                                       | {k: v for k, v in cal["raw"].items() if not k.startswith("forces")})
    scaled = calibration_metrics(dF, pred["F_spread"], "forces", "eV_per_A", scale=SCALE["forces"])
    assert {k: cal["scaled"][k] for k in scaled} == pytest.approx(scaled)
    assert cal["scaled"]["energy_rms_normalised_error"] == pytest.approx(
        cal["raw"]["energy_rms_normalised_error"] / SCALE["energy"])
    assert cal["scaled"]["energy_spread_spearman"] == cal["raw"]["energy_spread_spearman"]
    for name in ("energy_miscalibration_area", "forces_nll_eV_per_A", "dipole_spread_spearman"):
        assert np.isfinite(cal["raw"][name])
    write_predictions(pred, tmp_path / "p.csv")
    write_atom_predictions(pred, tmp_path / "a.npz")
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv")
    assert {"E_spread_eV", "F_spread_max_eV_per_A", "F_spread_rms_eV_per_A", "D_spread_eA"} <= set(table)
    np.testing.assert_allclose(table["F_spread_max_eV_per_A"][0],
                               pred["F_spread"][pred["offsets"][0]:pred["offsets"][1]].max(), rtol=1e-9)
    back = load_predictions(tmp_path / "p.csv", tmp_path / "a.npz")
    for key in ("E_spread", "D_spread", "F_spread"):
        np.testing.assert_allclose(back[key], pred[key], rtol=1e-9)


def test_single_model_evaluation_has_no_spreads(trained_run):  # noqa: F811
    from mmlwf.analysis.evaluate import evaluate_run, predictions_table

    doc, pred = evaluate_run(trained_run.run, trained_run.data, trained_run.split, subset="test")
    assert "calibration" not in doc and not any(k.endswith("_spread") for k in pred)
    assert not any("spread" in c for c in predictions_table(pred).columns)


def test_uncertainty_plots_and_report(evaluated, ensemble_run, trained_run, tmp_path):  # noqa: F811
    from mmlwf.analysis.evaluate import write_atom_predictions, write_metrics, write_predictions
    from mmlwf.analysis.plots import PLOT_FILES, make_plots
    from mmlwf.analysis.report import build_report
    from mmlwf.analysis.uncertainty_plots import UNCERTAINTY_PLOTS
    from mmlwf.rundir import ATOMS_FILE, METRICS_FILE, PREDICTIONS_FILE

    doc, pred = evaluated
    paths = make_plots(ensemble_run.run, tmp_path / "plots", pred, "physnet")
    assert [p.name for p in paths] == list(PLOT_FILES["physnet"]) + list(UNCERTAINTY_PLOTS)
    assert all(p.stat().st_size > 10_000 for p in paths)
    run = tmp_path / "run"
    import shutil

    shutil.copytree(ensemble_run.run, run)
    write_metrics(doc, run / METRICS_FILE)
    write_predictions(pred, run / PREDICTIONS_FILE)
    write_atom_predictions(pred, run / ATOMS_FILE)
    text = build_report([run, trained_run.run])
    assert f"Calibration of the uncertainties ({ENSEMBLE_SIZE} members)" in text
    assert "miscalibration area" in text and "energy × 2" in text
    assert 'alt="error vs spread"' in text and 'alt="calibration curve"' in text
    # the comparison table: the ensemble's size and calibration, empty for the single model
    from mmlwf.analysis.compare import UNCERTAINTY_COLUMNS, compare_runs

    table = compare_runs([run, trained_run.run])
    assert [c for c in table.columns if c in UNCERTAINTY_COLUMNS] == list(UNCERTAINTY_COLUMNS)
    assert table["ensemble_members"].iloc[0] == ENSEMBLE_SIZE and np.isnan(table["ensemble_members"].iloc[1])
    for col in UNCERTAINTY_COLUMNS[1:]:
        assert table[col].iloc[0] == doc["calibration"]["scaled"][col] and np.isnan(table[col].iloc[1])
    assert "forces: Spearman ρ(|error|, spread)" in text and "Uncertainty (ensembles" in text


@pytest.mark.slow
def test_dcmnet_ensemble_esp_spreads(trained_dcmnet, tmp_path):  # noqa: F811
    """A DCMNet ensemble: ESP spreads per grid point, their calibration and table column."""
    from mmlwf.analysis.evaluate import evaluate_run, predictions_table

    from .ensemble_fixtures import make_ensemble_run

    run = make_ensemble_run(trained_dcmnet.run, tmp_path / "dcm_ensemble")
    doc, pred = evaluate_run(run, trained_dcmnet.data, trained_dcmnet.split, subset="test")
    assert pred["esp_spread"].shape == pred["esp_pred"].shape and np.all(pred["esp_spread"] > 0)
    assert np.isfinite(doc["calibration"]["raw"]["esp_miscalibration_area"])
    table = predictions_table(pred)
    g = pred["grid_offsets"]
    np.testing.assert_allclose(table["esp_spread_rms_V"][0], np.sqrt(np.mean(pred["esp_spread"][g[0]:g[1]] ** 2)))
