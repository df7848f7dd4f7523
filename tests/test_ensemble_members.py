"""The member axis helpers (mmlwf.ensemble): statistics as the issue defines them, the same in
numpy and jax.numpy, and the ensemble forward."""

import jax
import jax.numpy as jnp
import numpy as np

from mmlwf.analysis.calibration import member_mean_spread
from mmlwf.ensemble import ensemble_forward, ensemble_size, member, member_stats, spread_scale, stack_members


def test_member_stats_by_hand():
    forces = np.array([[[1.0, 0.0, 0.0]], [[-1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])  # (4, 1, 3)
    mean, spread = member_stats(forces, 1)
    np.testing.assert_allclose(mean, [[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(spread, [np.sqrt(0.5)])  # sqrt((1 + 1 + 0 + 0) / 4)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 7, 3))
    for ndim in (0, 1):
        ref = member_mean_spread(values, ndim)
        got = member_stats(jnp.asarray(values), ndim, jnp)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(np.asarray(b), a, rtol=1e-6)


def test_info_helpers():
    assert ensemble_size({}) == 1 and ensemble_size(None) == 1
    info = {"ensemble": {"size": 4, "kind": "full", "scale": {"forces": 2.5}}}
    assert ensemble_size(info) == 4
    assert spread_scale(info, "forces") == 2.5 and spread_scale(info, "energy") == 1.0


def test_ensemble_forward_is_the_members_mean():
    def forward(p, batch):
        e = p["w"] * batch["x"]
        return {"energy": e, "forces": jnp.outer(e, p["v"]), "other": e + 1}

    ps = [{"w": jnp.float32(w), "v": jnp.array([1.0, 0.0, w])} for w in (1.0, 2.0, 4.0)]
    stacked = stack_members(ps)
    batch = {"x": jnp.array([1.0, -2.0])}
    out = ensemble_forward(forward)(stacked, batch)
    each = [forward(member(stacked, k), batch) for k in range(3)]
    np.testing.assert_allclose(out["energy"], np.mean([e["energy"] for e in each], axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["other"], np.mean([e["other"] for e in each], axis=0), rtol=1e-6)
    _, spread = member_mean_spread(np.stack([e["forces"] for e in each]), 1)
    np.testing.assert_allclose(out["forces_spread"], spread, rtol=1e-5)
    assert out["forces_members"].shape == (3, 2, 3) and "other_spread" not in out
    assert jax.tree.structure(member(stacked, 1)) == jax.tree.structure(ps[1])
