"""Ensembles trained in one process and one compiled step (issue 16): each member is the
single model its seed gives, the ensemble resumes exactly, and the run records the ensemble."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mmlwf.ensemble import ensemble_size, member
from mmlwf.errors import ConfigError
from mmlwf.training import checkpoint_meta, load_config, load_params, train

from .test_training import (
    BASE,
    PairModel,
    assert_same_history,
    assert_same_latest_params,
    element_energies,
    history_rows,
    loaders,
    make_data,
    run_training,
    start_subprocess,
)

ENSEMBLE = ("ensemble.size=2", "training.max_epochs=3")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ensemble_data"))


def _train(run_dir, data, overrides, loader_config=None):
    config = load_config(BASE, overrides)
    tl, vl = loaders(data, loader_config or config)
    return train(run_dir, model=PairModel(), config=config, train_loader=tl, valid_loader=vl,
                 element_energies=element_energies(data), progress=False)


def test_members_equal_single_models_with_their_seeds(data, tmp_path, x64):
    """Member k after 3 epochs (18 steps) is the model of a single run with seed k on the same
    batches (the loader of seed 0), to 1e-5 in float64; the members differ."""
    summary = _train(tmp_path / "ens", data, ENSEMBLE)
    assert summary["status"] == "completed" and summary["steps"] >= 18
    stacked, info = load_params(tmp_path / "ens", "latest", ema=False)
    assert ensemble_size(info) == 2 and info["ensemble"]["member_seeds"] == [0, 1]
    base_config = load_config(BASE, ENSEMBLE[1:])
    for k in range(2):
        _train(tmp_path / f"single{k}", data, (*ENSEMBLE[1:], f"training.seed={k}"), loader_config=base_config)
        single, single_info = load_params(tmp_path / f"single{k}", "latest", ema=False)
        assert ensemble_size(single_info) == 1
        for a, b in zip(jax.tree.leaves(member(stacked, k)), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
        # the best checkpoint holds each member's own best epoch, as the single run chose it
        best, _ = load_params(tmp_path / "ens", "best")
        single_best, _ = load_params(tmp_path / f"single{k}", "best")
        for a, b in zip(jax.tree.leaves(member(best, k)), jax.tree.leaves(single_best)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
    first = [np.asarray(leaf) for leaf in jax.tree.leaves(member(stacked, 0))]
    second = [np.asarray(leaf) for leaf in jax.tree.leaves(member(stacked, 1))]
    assert any(not np.allclose(a, b) for a, b in zip(first, second))
    _check_scale(tmp_path / "ens", data)
    rows = history_rows(tmp_path / "ens")
    assert {"valid_loss_m0", "valid_loss_m1", "valid_loss"} <= set(rows[0])
    # the ensemble's loss is that of its mean prediction: below the members' mean loss (convexity)
    assert float(rows[-1]["valid_loss"]) <= 0.5 * (float(rows[-1]["valid_loss_m0"]) + float(rows[-1]["valid_loss_m1"]))


def _check_scale(run_dir, data):
    """model.json's spread scales are calibration.fit_scale of the best members evaluated one by
    one on the validation loader (errors of the member mean, spreads over members)."""
    from mmlwf.analysis.calibration import fit_scale, member_mean_spread
    from mmlwf.training.losses import prepare_batch, reference_table
    from mmlwf.training.state import make_forward

    params, info = load_params(run_dir, "best")
    scale = info["ensemble"]["scale"]
    assert set(scale) == {"energy", "forces"} and all(v > 0 for v in scale.values())
    forward = jax.jit(make_forward(PairModel()))
    _, vl = loaders(data, load_config(BASE))
    table = reference_table(element_energies(data))
    e_err, e_sp, f_err, f_sp = [], [], [], []
    for raw in vl.epoch(0):
        b = prepare_batch(raw, table)
        outs = [jax.device_get(forward(member(params, k), b)) for k in range(2)]
        gm, am = np.asarray(b.graph_mask), np.asarray(b.atom_mask)
        e_mean, e_spread = member_mean_spread(np.stack([o["energy"] for o in outs]))
        f_mean, f_spread = member_mean_spread(np.stack([o["forces"] for o in outs]), 1)
        e_err.append((e_mean - b.E_target)[gm]), e_sp.append(e_spread[gm])
        f_err.append((f_mean - b.F)[am]), f_sp.append(f_spread[am])
    np.testing.assert_allclose(scale["energy"], fit_scale(np.concatenate(e_err), np.concatenate(e_sp)), rtol=1e-4)
    np.testing.assert_allclose(scale["forces"], fit_scale(np.concatenate(f_err), np.concatenate(f_sp)), rtol=1e-4)


def test_ensemble_resume_after_sigterm_is_exact(data, tmp_path):
    """Stopped mid-epoch and resumed: the same history, latest and best (per-member bests read
    back from the best checkpoint) as the uninterrupted run."""
    overrides = (*ENSEMBLE[:1], "training.max_epochs=5", "training.early_stopping_patience=1")
    ref = tmp_path / "ref"
    ref_summary = run_training(ref, data, overrides)
    run = tmp_path / "run"
    proc = start_subprocess(run, data, "--sigterm-at", "2,3", *overrides)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    summary = run_training(run, data, overrides)
    assert summary["status"] == ref_summary["status"] and summary["best_epoch"] == ref_summary["best_epoch"]
    assert_same_history(ref, run)
    assert_same_latest_params(ref, run)
    a, _ = load_params(ref, "best")
    b, _ = load_params(run, "best")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x)[0] == 2
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    meta = checkpoint_meta(run, "latest")["members"]
    assert len(meta["best_epoch"]) == 2 and max(meta["best_epoch"]) == summary["best_epoch"]


def test_ensemble_settings_checked_and_not_changed_on_resume(data, tmp_path):
    with pytest.raises(ConfigError, match="ensemble.size"):
        load_config(BASE, ["ensemble.size=0"])
    with pytest.raises(ConfigError, match="unknown setting 'ensemble.sise'"):
        load_config(BASE, ["ensemble.sise=2"])
    run = tmp_path / "run"
    run_training(run, data, ("training.max_epochs=1",))
    with pytest.raises(ConfigError, match="ensemble.size"):
        run_training(run, data, ("training.max_epochs=2", "ensemble.size=2"))
