"""The uncertainty part of an evaluation without a trained model (fast): the calibration
section from a synthetic ensemble prediction dict, points of zero spread, the binned errors,
the figures (scatter and density variants) and the report's calibration table."""

from __future__ import annotations

import numpy as np
import pytest

from mmlwf.analysis.calibration import calibration_metrics
from mmlwf.analysis.uncertainty import calibration_table, has_spreads, uncertainty_metrics
from mmlwf.analysis.uncertainty_plots import UNCERTAINTY_PLOTS, binned_rms, make_uncertainty_plots

INFO = {"ensemble": {"size": 4, "kind": "full", "member_seeds": [0, 1, 2, 3], "scale": {"energy": 2.0}}}


def _pred(n_mol: int = 40, n_atoms: int = 3, seed: int = 0) -> dict:
    """Calibrated synthetic predictions: errors drawn with the spread as their width."""
    rng = np.random.default_rng(seed)
    A = n_mol * n_atoms
    E_spread, F_spread = rng.uniform(0.01, 0.1, n_mol), rng.uniform(0.05, 0.5, A)
    E_ref, F_ref = rng.normal(size=n_mol), rng.normal(size=(A, 3))
    return {"index": np.arange(n_mol), "n_atoms": np.full(n_mol, n_atoms),
            "offsets": np.arange(0, A + 1, n_atoms), "Z": np.ones(A, int),
            "E_ref": E_ref, "E_pred": E_ref + E_spread * rng.normal(size=n_mol), "E_spread": E_spread,
            "F_ref": F_ref, "F_pred": F_ref + F_spread[:, None] / np.sqrt(3) * rng.normal(size=(A, 3)),
            "F_spread": F_spread}


def test_uncertainty_metrics_raw_and_scaled():
    pred = _pred()
    doc = uncertainty_metrics(pred, INFO)
    assert doc["members"] == 4 and doc["spread_scale"] == {"energy": 2.0, "forces": 1.0}
    dE = pred["E_pred"] - pred["E_ref"]
    assert doc["raw"]["energy_nll_eV"] == pytest.approx(calibration_metrics(dE, pred["E_spread"], "energy", "eV")
                                                       ["energy_nll_eV"])
    assert doc["scaled"]["energy_miscalibration_area"] == pytest.approx(
        calibration_metrics(dE, pred["E_spread"], "energy", "eV", 2.0)["energy_miscalibration_area"])
    assert doc["raw"]["forces_rms_normalised_error"] == pytest.approx(1.0, abs=0.15)  # calibrated by construction
    assert doc["scaled"]["energy_rms_normalised_error"] == pytest.approx(doc["raw"]["energy_rms_normalised_error"] / 2)
    assert uncertainty_metrics({k: v for k, v in pred.items() if "spread" not in k}, {}) is None


def test_zero_spreads_are_left_out_and_counted():
    pred = _pred()
    pred["F_spread"][:5] = 0.0
    doc = uncertainty_metrics(pred, INFO)
    assert doc["n_zero_spread"] == {"energy": 0, "forces": 5}
    keep = slice(5, None)
    dF = (pred["F_pred"] - pred["F_ref"])[keep]
    assert doc["raw"]["forces_spread_spearman"] == pytest.approx(
        calibration_metrics(dF, pred["F_spread"][keep], "forces", "eV_per_A")["forces_spread_spearman"])


def test_binned_rms_equal_count_bins():
    spread = np.arange(1.0, 61.0)
    x, y = binned_rms(2 * spread, spread, n_bins=6)
    assert x.shape == (6,)
    np.testing.assert_allclose(y, 2 * x)
    np.testing.assert_allclose(x[0], np.sqrt(np.mean(np.arange(1.0, 11.0) ** 2)))
    assert binned_rms(np.ones(3), np.ones(3))[0].shape == (1,)


@pytest.mark.parametrize("n_mol", [30, 800])  # 2400 force points: the density (hexbin) variant
def test_uncertainty_figures(tmp_path, n_mol):
    pred = _pred(n_mol)
    assert has_spreads(pred)
    paths = make_uncertainty_plots(pred, tmp_path, INFO)
    assert [p.name for p in paths] == list(UNCERTAINTY_PLOTS)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert make_uncertainty_plots({k: v for k, v in pred.items() if "spread" not in k}, tmp_path / "none", {}) == []


def test_calibration_table_columns():
    doc = uncertainty_metrics(_pred(), INFO)
    header, rows = calibration_table(doc)
    assert header == ["metric", "energy (eV), raw", "energy (eV), scaled", "forces (eV/Å, per atom), raw",
                      "forces (eV/Å, per atom), scaled"]
    scale_row = next(r for r in rows if r[0] == "spread scale")
    assert scale_row[1:] == [1.0, 2.0, 1.0, 1.0]
    assert all(len(r) == len(header) for r in rows)
