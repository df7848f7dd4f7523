"""A new run's fresh parameters set from the training statistics (the model kind's
``init_from_stats``): PhysNet's energy shift and scale, recorded in train.log and model.json,
not redone on resume, left at 0/1 without energies; a mixture's pooled statistics."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from mmlwf.models import build_model, energy_and_forces, init_params
from mmlwf.models.registry import get
from mmlwf.training.data import init_statistics
from mmlwf.training.runner import run_training

from .test_physnet import METHANE, WATER, molecule, one_batch, write

SMALL = {"features": 8, "num_iterations": 1, "num_basis_functions": 4, "cutoff": 3.0, "num_residual": 1}
STATS = {"energy_residual_per_atom": {"mean": -4.7, "std": 0.02, "rms": 4.70004}, "force_rms": 0.9}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    rng = np.random.default_rng(0)
    ds = write(tmp_path_factory.mktemp("init") / "packed", [molecule(WATER, rng), molecule(METHANE, rng)])
    return one_batch(ds, cutoff=SMALL["cutoff"])


def test_physnet_starts_at_the_mean_residual_per_atom(batch):
    model = build_model(SMALL)
    fresh = init_params(model, jax.random.PRNGKey(0), batch)
    variables, note = get("physnet").init_from_stats(model, fresh, STATS)
    p = variables["params"]
    np.testing.assert_allclose(np.asarray(p["energy_shift"]), -4.7, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p["energy_scale"]), 0.02, rtol=1e-6)
    assert "shift -4.7 eV, scale 0.02 eV" in note
    # the output layers start at zero: a fresh model's energy is the shift times the atoms
    energy = np.asarray(energy_and_forces(model, variables, batch)["energy"])
    np.testing.assert_allclose(energy[:2], [-4.7 * 3, -4.7 * 5], rtol=1e-5)
    before = np.asarray(energy_and_forces(model, fresh, batch)["energy"])
    np.testing.assert_allclose(before[:2], 0.0, atol=1e-6)


def test_statistics_without_energies_leave_zero_and_one(batch):
    model = build_model(SMALL)
    fresh = init_params(model, jax.random.PRNGKey(0), batch)
    esp_only = {"elements": [1, 8], "esp": {"rms_V": 0.1}}  # what an ESP-only stats.json holds
    variables, note = get("physnet").init_from_stats(model, fresh, esp_only)
    np.testing.assert_array_equal(np.asarray(variables["params"]["energy_shift"]), 0.0)
    np.testing.assert_array_equal(np.asarray(variables["params"]["energy_scale"]), 1.0)
    assert "0/1" in note and "no energies" in note


def test_a_kind_without_the_hook_keeps_its_variables():
    variables = {"params": {"w": np.ones(3)}}
    got, note = get("dcmnet").init_from_stats(object(), variables, STATS)
    assert got is variables and note is None


def test_mixture_statistics_are_pooled_only_about_the_members_references(tmp_path):
    def stats(path, mean, rms, force_rms, n, refs):
        path.write_text(json.dumps({"n_train": n, "n_atoms": {"mean": 3.0}, "element_energies_by_Z": refs,
                                    "energy_residual_per_atom": {"mean": mean, "std": 0.0, "rms": rms},
                                    "force_rms": force_rms}))
        return path

    refs = {"1": -13.6, "8": -2040.0}
    a = stats(tmp_path / "a.json", -4.0, 4.0, 1.0, 10, refs)
    b = stats(tmp_path / "b.json", -5.0, 5.0, 2.0, 30, refs)
    pooled = init_statistics([a, b], refs, weights=[1.0, 1.0])
    assert pooled["energy_residual_per_atom"]["mean"] == pytest.approx(-4.75)
    assert pooled["energy_residual_per_atom"]["std"] == pytest.approx(np.sqrt((10 * 16 + 30 * 25) / 40 - 4.75**2))
    assert pooled["force_rms"] == pytest.approx(np.sqrt((10 + 30 * 4) / 40))
    assert init_statistics([a, b], {"1": -0.5, "8": -10.0}) is None  # refitted references: not these residuals
    assert init_statistics([a], refs)["force_rms"] == 1.0


def _data(tmp_path: Path) -> Path:
    from tests.test_training import make_data

    return make_data(tmp_path, n_water=16, n_methane=8)


def _config(max_epochs: int) -> dict:
    return {"model": {"type": "physnet", **SMALL},
            "training": {"batch_size": 8, "max_epochs": max_epochs, "seed": 0, "learning_rate": 1e-3}}


def test_a_new_run_says_how_and_a_resumed_run_keeps_its_parameters(tmp_path, monkeypatch):
    from mmlwf.training import load_params

    data = _data(tmp_path)
    stats = json.loads((data / "stats.json").read_text())
    mean = stats["energy_residual_per_atom"]["mean"]
    run = tmp_path / "run"
    run_training(_config(1), data / "packed", data / "split.npz", data / "stats.json", run, progress=False)
    log = (run / "train.log").read_text()
    assert log.count("energy shift/scale from the training statistics") == 1
    note = json.loads((run / "model.json").read_text())["initialised_from_stats"]
    assert f"shift {mean:.6g} eV" in note
    # resume with other statistics: the checkpoint's parameters go on, nothing is set again
    import mmlwf.training.runner as runner

    other = {**stats, "energy_residual_per_atom": {**stats["energy_residual_per_atom"], "mean": mean + 100.0}}
    monkeypatch.setattr(runner, "init_statistics", lambda *a, **k: other)
    run_training(_config(2), data / "packed", data / "split.npz", data / "stats.json", run, progress=False)
    assert (run / "train.log").read_text().count("energy shift/scale") == 1
    assert json.loads((run / "model.json").read_text())["initialised_from_stats"] == note
    params, _ = load_params(run, "latest", ema=False)
    shift = np.asarray(params["params"]["energy_shift"] if "params" in params else params["energy_shift"])
    assert np.all(np.abs(shift[[1, 6, 8]] - mean) < 1.0)
