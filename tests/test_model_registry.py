"""The model registry: a kind registered from outside the package (tests/toy_pair_model.py,
loaded through ``MMLWF_PLUGINS``) runs through ``mmlwf train``, ``evaluate``, ``export``, the
ASE calculator and the workflow, with no other module touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.errors import ConfigError
from mmlwf.models import registry

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "tests.toy_pair_model"


@pytest.fixture
def toy_kind(monkeypatch):
    """The toy kind, registered through the plugin environment variable (as in a subprocess)."""
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    registry.load_plugins(force=True)
    yield registry.get("toy_pair")
    registry.unregister("toy_pair")
    sys.modules.pop(PLUGIN, None)


def test_builtin_kinds_and_unknown_names():
    assert list(registry.kinds())[:2] == ["physnet", "dcmnet"]
    assert registry.get(None).name == "physnet" and registry.get("DCMNet").name == "dcmnet"
    with pytest.raises(ConfigError) as err:
        registry.get("physnett")
    assert str(err.value).count("\n") == 0 and "did you mean 'physnet'" in str(err.value)
    assert registry.get("physnet").predicts_energy and registry.get("physnet").exportable
    assert not registry.get("dcmnet").predicts_energy and registry.get("dcmnet").forward_options == ("esp_decay_length",)


def test_registry_and_settings_need_no_jax():
    code = ("import sys; from mmlwf.models import registry; from mmlwf.settings import MODELS; "
            "from mmlwf.rundir import RunDir; registry.get('toy_pair'); assert 'toy_pair' in MODELS; "
            "assert RunDir('tests/fixtures/old_run').n_parameters() > 0; "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)")
    env = {**os.environ, registry.PLUGINS_ENV: PLUGIN, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_missing_plugin_is_one_line(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_ENV, "no_such_mmlwf_plugin")
    with pytest.raises(ConfigError, match="no_such_mmlwf_plugin"):
        registry.load_plugins(force=True)
    monkeypatch.delenv(registry.PLUGINS_ENV)
    registry.load_plugins(force=True)


def test_settings_of_a_plugin_kind_are_checked(toy_kind):
    from mmlwf.settings import MODELS, model_settings
    from mmlwf.settings.base import SettingError

    assert MODELS["toy_pair"] is toy_kind.settings_class
    assert model_settings({"type": "toy_pair", "n_basis": 3}).fields() == {"n_basis": 3, "features": 4, "cutoff": 4.0}
    with pytest.raises(SettingError, match="n_basi"):
        model_settings({"type": "toy_pair", "n_basi": 3})


def _water_dataset(root: Path, n: int = 12):
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    from .test_workflow import write_extxyz

    write_extxyz(root / "water.extxyz", n=n)
    ds = convert([root / "water.extxyz"], root / "ds")
    split_dataset(ds, root / "split.npz", valid=2, test=2, seed=0)
    write_stats(compute_stats(ds, root / "split.npz"), root / "stats.json")
    return ds, root / "split.npz", root / "stats.json"


def test_toy_kind_through_train_evaluate_export_and_the_calculator(toy_kind, tmp_path):
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.cli import main
    from mmlwf.rundir import RunDir

    ds, split, stats = _water_dataset(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--data", str(ds), "--split", str(split), "--stats", str(stats), "-o", str(run),
                 "--set", "model.type=toy_pair", "--set", "model.n_basis=4", "--set", "training.batch_size=4",
                 "--set", "training.max_epochs=2"]) == 0
    rd = RunDir(run)
    assert rd.model_type == "toy_pair" and rd.kind is toy_kind
    assert rd.info["model"]["n_basis"] == 4 and len(rd.history_rows()) == 2
    trained = rd.load()
    n_params = sum(np.size(x) for x in __import__("jax").tree_util.tree_leaves(trained.params))
    assert rd.n_parameters() == n_params
    # evaluate: metrics of an energy model and the kind's plots
    assert main(["evaluate", str(run), "--data", str(ds), "--split", str(split), "-o", str(tmp_path / "m.json")]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["model_type"] == "toy_pair" and doc["metrics"]["n_structures"] == 2
    assert np.isfinite(doc["metrics"]["energy_mae_eV"]) and np.isfinite(doc["metrics"]["forces_mae_eV_per_A"])
    from mmlwf.analysis.evaluate import evaluate_run, write_atom_predictions, write_predictions
    from mmlwf.analysis.plots import PLOT_FILES, make_plots

    _, pred = evaluate_run(run, ds, split)
    write_predictions(pred, run / "predictions.csv")
    write_atom_predictions(pred, run / "predictions_atoms.npz")
    made = make_plots(run, tmp_path / "plots", pred, "toy_pair")
    assert [p.name for p in made] == list(PLOT_FILES["toy_pair"]) and all(p.stat().st_size for p in made)
    # export, and the calculator from the run and from the file agree
    assert main(["export", str(run), "-o", str(tmp_path / "toy.mmlwf")]) == 0
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0.02, 0], [-0.24, 0.93, 0.02]])
    results = []
    for calc in (MMLWFCalculator.from_run(run), MMLWFCalculator.from_file(tmp_path / "toy.mmlwf")):
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    assert np.isfinite(results[0][0]) and results[0][1].shape == (3, 3)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=0, atol=1e-6)
    # forces are -dE/dR
    x = atoms.positions.copy()
    h = 1e-3
    atoms.positions = x + [[h, 0, 0], [0, 0, 0], [0, 0, 0]]
    ep = atoms.get_potential_energy()
    atoms.positions = x - [[h, 0, 0], [0, 0, 0], [0, 0, 0]]
    em = atoms.get_potential_energy()
    assert abs(-(ep - em) / (2 * h) - results[0][1][0, 0]) < 2e-2
    # the comparison table needs no checkpoint restore
    from mmlwf.analysis.compare import compare_runs

    row = compare_runs([run]).iloc[0]
    assert row["model_type"] == "toy_pair" and row["n_params"] == n_params and row["n_basis"] == 4


@pytest.mark.slow
@pytest.mark.workflow
def test_toy_kind_through_the_workflow(tmp_path, monkeypatch):
    from .test_workflow import snakemake, write_config, write_extxyz

    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    write_extxyz(tmp_path / "water.extxyz", n=8)
    write_config(tmp_path, {
        "datasets": {"water": {"sources": ["water.extxyz"], "split": {"valid": 1, "test": 1}}},
        "experiments": {"toy": {"dataset": "water", "model": {"type": "toy_pair", "n_basis": 4},
                                "training": {"batch_size": 2, "max_epochs": 1}}},
    })
    proc = snakemake(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "results/runs/toy"
    assert json.loads((run / "model.json").read_text())["model"]["type"] == "toy_pair"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_type"] == "toy_pair" and np.isfinite(metrics["metrics"]["energy_mae_eV"])
    assert sorted(p.name for p in (run / "plots").iterdir() if not p.name.startswith(".")) == sorted(
        ("learning_curves.png", "parity_energy.png", "parity_forces.png"))
    assert "toy" in (tmp_path / "results/report/index.html").read_text()
    # a misspelt setting of the plugin's model stops the workflow before any job, in one line
    write_config(tmp_path, {
        "datasets": {"water": {"sources": ["water.extxyz"], "split": {"valid": 1, "test": 1}}},
        "experiments": {"toy": {"dataset": "water", "model": {"type": "toy_pair", "n_basi": 4}}},
    })
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode != 0 and "n_basi" in proc.stderr


def test_train_with_a_dcmnet_and_no_forward_honours_esp_decay_length(tmp_path):
    """``mmlwf.training.train(model=DCMNet…)`` without ``forward=`` uses the kind's forward
    with ``training.esp_decay_length`` (the ESP loss weighted towards the molecule)."""
    import functools

    from mmlwf.models import dcmnet
    from mmlwf.split import split_dataset
    from mmlwf.training import load_config, train
    from mmlwf.training.data import make_loaders

    from .test_dcmnet import _esp_dataset

    _esp_dataset(tmp_path / "ds", n=8)
    split_dataset(tmp_path / "ds", tmp_path / "split.npz", valid=0.25, test=0.0, seed=0)
    cfg = load_config({"model": {"type": "dcmnet", "n_dcm": 1, "features": 4, "num_iterations": 1, "cutoff": 3.0},
                       "training": {"batch_size": 6, "max_epochs": 1, "esp_decay_length": 0.3}})
    model = dcmnet.build_model(cfg.model)
    losses = {}
    for name, forward in [("default", None),
                          ("decay", functools.partial(dcmnet.forward, model, esp_decay_length=0.3)),
                          ("uniform", functools.partial(dcmnet.forward, model))]:
        loaders = make_loaders(tmp_path / "ds", tmp_path / "split.npz", cfg, cutoff=3.0)
        summary = train(tmp_path / name, model=model, config=cfg, train_loader=loaders[0], valid_loader=loaders[1],
                        element_energies=None, forward=forward, progress=False)
        assert summary["status"] == "completed"
        losses[name] = summary["last"]["train_loss"]
    assert losses["default"] == losses["decay"] and losses["default"] != losses["uniform"], losses
