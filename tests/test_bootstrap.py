"""Bootstrapped ensemble members (issue 16): each member's error sums are those of its own
resample of the training split, applied as weights on the shared batches."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mmlwf.errors import ConfigError
from mmlwf.training import bootstrap, load_config, load_params
from mmlwf.training.bootstrap import SampleWeights, bootstrap_counts
from mmlwf.training.losses import batch_sums, prepare_batch, reference_table
from mmlwf.training.state import make_forward

from .test_ensemble_training import _train
from .test_training import BASE, PairModel, element_energies, loaders, make_data

BOOTSTRAP = ("ensemble.size=2", "ensemble.bootstrap=true", "training.max_epochs=2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("bootstrap_data"))


def test_counts_are_seeded_resamples():
    counts = bootstrap_counts(200, 3, seed=5)
    assert counts.shape == (3, 200) and (counts.sum(axis=1) == 200).all()
    np.testing.assert_array_equal(counts, bootstrap_counts(200, 3, seed=5))
    assert not np.array_equal(counts[0], counts[1])
    assert not np.array_equal(counts, bootstrap_counts(200, 3, seed=6))
    assert not np.array_equal(counts, bootstrap_counts(200, 3, seed=5, dataset=1))
    assert 0.25 < (counts == 0).mean() < 0.5  # (1 - 1/n)^n ~ 37 % left out


def test_sample_weights_follow_dataset_and_index():
    weights = SampleWeights([6, 4], [np.array([1, 3, 5]), np.array([0, 2])], members=2, seed=0)
    assert weights.tables[0].shape == (2, 6) and (weights.tables[0][:, [0, 2, 4]] == 0).all()
    np.testing.assert_array_equal(weights.tables[0][:, [1, 3, 5]], bootstrap_counts(3, 2, 0, 0))
    np.testing.assert_array_equal(weights.tables[1][:, [0, 2]], bootstrap_counts(2, 2, 0, 1))

    class Batch:  # the fields SampleWeights.of reads
        index = np.array([2, 0, -1])
        dataset = np.int32(1)

    got = weights.of(Batch())
    assert got.shape == (2, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, :2], weights.tables[1][:, [2, 0]])
    assert (got[:, 2] == 0).all()  # padding


def test_weighted_sums_are_those_of_repeated_graphs(data):
    """batch_sums with graph weights w equal sum_g w_g * (the sums of graph g alone)."""
    config = load_config(BASE)
    tl, _ = loaders(data, config)
    table = reference_table(element_energies(data))
    batch = prepare_batch(next(iter(tl.epoch(0))), table)
    model = PairModel()
    params = model.init(jax.random.PRNGKey(0), *[batch[k] for k in ("Z", "R", "dst", "src", "atom_graph", "atom_mask",
                                                                     "pair_mask", "graph_mask", "Qtot")])
    out = jax.jit(make_forward(model))(params, batch)
    gm = np.asarray(batch.graph_mask)
    rng = np.random.default_rng(0)
    w = np.where(gm, rng.integers(0, 4, gm.shape), 0).astype(np.float32)
    got = jax.device_get(batch_sums(out, batch, w))
    want = {k: 0.0 for k in got}
    for g in np.flatnonzero(gm):
        only = np.zeros_like(gm)
        only[g] = True
        atom_only = np.asarray(batch.atom_mask) & (np.asarray(batch.atom_graph) == g)
        alone = jax.device_get(batch_sums(out, batch._replace(graph_mask=only, atom_mask=atom_only)))
        for k in want:
            want[k] += w[g] * np.float64(alone[k])
    assert {"energy_sse", "forces_sse", "forces_n", "dipole_sae", "charge_n"} <= set(got)
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    unweighted = jax.device_get(batch_sums(out, batch))
    ones = jax.device_get(batch_sums(out, batch, np.ones_like(w)))
    for k in unweighted:
        np.testing.assert_array_equal(ones[k], unweighted[k], err_msg=k)


def test_bootstrap_members_train_on_their_samples(data, tmp_path, monkeypatch):
    """Draw counts of 1 everywhere give exactly the plain ensemble (the weights reach the step
    and a weight of 1 changes nothing); real draws change what the members learn."""
    _train(tmp_path / "plain", data, BOOTSTRAP[:1] + BOOTSTRAP[2:])
    plain, _ = load_params(tmp_path / "plain", "latest", ema=False)
    _train(tmp_path / "drawn", data, BOOTSTRAP)
    drawn, info = load_params(tmp_path / "drawn", "latest", ema=False)
    assert info["ensemble"]["bootstrap"] is True
    leaves = list(zip(jax.tree.leaves(plain), jax.tree.leaves(drawn), strict=True))
    assert all(not np.allclose(a[k], b[k]) for k in range(2) for a, b in leaves[:1])

    monkeypatch.setattr(bootstrap, "bootstrap_counts", lambda n, members, seed, dataset=0:
                        np.ones((members, n), np.int32))
    _train(tmp_path / "ones", data, BOOTSTRAP)
    ones, _ = load_params(tmp_path / "ones", "latest", ema=False)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(ones), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_bootstrap_needs_a_full_ensemble():
    with pytest.raises(ConfigError, match="ensemble.bootstrap needs an ensemble of 2 or more"):
        load_config(BASE, ["ensemble.bootstrap=true"])
    assert load_config(BASE, BOOTSTRAP).ensemble.bootstrap
