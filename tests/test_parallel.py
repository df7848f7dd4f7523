"""Data parallelism (:mod:`mmlwf.training.parallel`): two forced host devices versus one.

Two CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before jax is
imported, so the two-device part runs once in a subprocess (this file doubles as the script:
``python -m tests.test_parallel OUT DATA``) and writes its results to ``OUT``; the tests
below check them. The comparisons are exact by construction up to float32 rounding:

* one step: the 2-device loss, error sums and gradient on the batches ``(b1, b2)`` against
  one device on a single batch the loader assembles from the molecules of ``b1`` and ``b2``
  (the models are sums over molecules, so only the order of the float32 sums differs);
* whole runs: 2-device training against a 1-device run (``data_parallel: off``) whose
  loader yields, for every 2-device step, one batch holding exactly that step's molecules
  (:class:`MergedLoader`), so both runs see the same molecules in the same steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from itertools import pairwise
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.test_training import (
    BASE,
    CUTOFF,
    RUN_DEPENDENT,
    PairModel,
    PoisonedLoader,
    element_energies,
    loaders,
    make_data,
)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
RTOL = 2e-5  # float32 sums in another order


class MergedLoader:
    """The single-device twin of an ``n``-device run over ``inner``: one batch per step of the
    ``n``-device run, holding the molecules of that step's (up to ``n``) batches."""

    def __init__(self, inner, n: int) -> None:
        from mmlwf.batching import BatchLoader, Budget

        self.inner, self.n, self.seed = inner, n, inner.seed
        self.members = inner.members  # the datasets and training structures (bootstrap weights)
        full = max(inner.budgets)  # n batches of any shape fit n times the full budget
        big = Budget(n * full.n_graphs, n * full.n_atoms, n * full.n_pairs)
        m = inner.members[0]
        self.big = BatchLoader(m.ds, m.indices, cutoff=inner.cutoff, budgets=[big], shuffle=False)

    def plan(self, epoch: int = 0):
        from mmlwf.training.parallel import group_sizes

        specs = self.inner.plan(epoch)
        out, at = [], 0
        for size in group_sizes([self.inner.budgets[s[2]] for s in specs], self.n):
            group = specs[at:at + size]
            at += size
            assert {s[0] for s in group} == {0}
            out.append((0, np.concatenate([s[1] for s in group]), 0))
        return out

    def assemble(self, k, positions, shape_id):
        return self.big.assemble(k, positions, shape_id)

    def epoch(self, epoch: int = 0):
        return (self.assemble(*spec) for spec in self.plan(epoch))

    def __len__(self) -> int:
        return len(self.plan(0))


def _rel(a, b, floor: float = 1e-6) -> float:
    """Largest |a - b| relative to the largest |b| of each leaf (or to ``floor``, for leaves that
    are rounding noise, like the charge errors of charges constrained to the total charge)."""
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.abs(x - y), initial=0.0) / max(np.max(np.abs(y), initial=0.0), floor)))
    return out


# ----------------------------------------------------------------------------- the 2-device script


def _step_checks(data: Path) -> dict:
    """Loss, sums and gradient of the 2-device step on (b1, b2) vs one device on b1 + b2."""
    from mmlwf.batching import BatchLoader, Budget
    from mmlwf.models import physnet
    from mmlwf.training import load_config
    from mmlwf.training.losses import model_inputs, prepare_batch, reference_table
    from mmlwf.training.parallel import DataParallel
    from mmlwf.training.state import make_eval_step, make_forward, make_loss_fn
    from tests.test_physnet import random_params

    config = load_config(BASE)
    tl, _ = loaders(data, config)
    table = reference_table(element_energies(data))
    specs = tl.plan(0)
    s1, s2 = next((a, b) for a, b in pairwise(specs) if a[2] == b[2])
    b1, b2 = (prepare_batch(tl.assemble(*s), table) for s in (s1, s2))
    full = max(tl.budgets)
    union_loader = BatchLoader(tl.members[0].ds, tl.members[0].indices, cutoff=CUTOFF, shuffle=False,
                               budgets=[Budget(2 * full.n_graphs, 2 * full.n_atoms, 2 * full.n_pairs)])
    union = prepare_batch(union_loader.assemble(0, np.concatenate([s1[1], s2[1]]), 0), table)
    assert union["graph_mask"].sum() == b1["graph_mask"].sum() + b2["graph_mask"].sum()
    big_b2 = prepare_batch(union_loader.assemble(0, s2[1], 0), table)  # b2 in the union's shape

    par = DataParallel(jax.local_devices())
    stacked = par.stack([b1, b2])
    alone = par.stack([b2])  # b2 and an all-padding batch
    R = stacked["R"]
    placement = {
        "n_devices": par.n,
        "device_set": len(R.sharding.device_set),
        "spec": [str(a) for a in R.sharding.spec],
        "shard_shapes": [list(s.data.shape) for s in R.addressable_shards],
        "shard_devices": sorted({str(s.device) for s in R.addressable_shards}),
        "shard0_is_b1": bool(np.array_equal(np.asarray(R.addressable_shards[0].data)[0], b1["R"])),
        "pad_graphs_on_device1": int(np.asarray(alone["graph_mask"].addressable_shards[1].data).sum()),
    }

    weights = {"energy": 1.0, "forces": 50.0, "dipole": 25.0, "charge": 10.0}
    out = {"placement": placement}
    # the stand-in model: loss, sums and parameter gradient
    model = PairModel()
    params = model.init(jax.random.PRNGKey(1), *model_inputs(union))
    one = jax.jit(jax.value_and_grad(make_loss_fn(make_forward(model), weights, "per_molecule"), has_aux=True))
    two = jax.jit(jax.value_and_grad(make_loss_fn(make_forward(model), weights, "per_molecule", par), has_aux=True))
    (l1, s1_), g1 = one(params, union)
    (l2, s2_), g2 = two(par.replicate(params), stacked)
    (la, sa), ga = one(params, big_b2)  # same shapes as above: no more compilations
    (lp, sp), gp = two(par.replicate(params), alone)
    out["pairtest"] = {
        "loss": [float(l1), float(l2)],
        "sums": _rel(s2_, s1_),
        "grad": _rel(g2, g1),
        "grad_finite": bool(all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g2))),
        "grad_moves": max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(g1)),
        "padded_loss": [float(la), float(lp)],
        "padded_sums": _rel(sp, sa),
        "padded_grad": _rel(gp, ga),
        "grad_replicated": all(len(x.sharding.device_set) == 2 and x.sharding.is_fully_replicated
                               for x in jax.tree.leaves(g2)),
    }
    # a tiny PhysNet (random parameters: no init compilation) under shard_map: energies, forces,
    # charges and dipoles to error sums (its parameter gradient would compile for ~10 s more)
    tiny = physnet.build_model({"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4,
                                "num_residual": 0, "cutoff": CUTOFF, "charges": True})
    forward = partial(physnet.energy_and_forces, tiny)
    params = random_params(tiny, union, seed=1, dtype=np.float32)
    one, two = make_eval_step(forward), make_eval_step(forward, par)
    s_one, s_two = one(params, union), two(par.replicate(params), stacked)
    out["physnet"] = {
        "sums": _rel(s_two, s_one),
        "padded_sums": _rel(two(par.replicate(params), alone), one(params, big_b2)),
        "terms": sorted(k for k in s_two if k.endswith("_n")),
        "finite": bool(all(np.isfinite(float(v)) for v in s_two.values())),
        "errors": min(float(s_one[f"{t}_sse"]) for t in ("energy", "forces", "dipole")),
    }
    return out


def _run(run_dir: Path, data: Path, overrides=(), train_loader=None) -> dict:
    from mmlwf.training import load_config, train

    config = load_config(BASE, [f"training.max_epochs={EPOCHS}", *overrides])
    tl, vl = loaders(data, config)
    return train(run_dir, model=PairModel(), config=config, train_loader=train_loader or tl, valid_loader=vl,
                 element_energies=element_energies(data), progress=False)


def main(argv) -> int:
    """Subprocess entry (two devices): ``OUT DATA``; writes ``OUT/results.json`` and run dirs."""
    from mmlwf.training import TrainingDiverged, checkpoint_meta, load_config

    out, data = Path(argv[0]), Path(argv[1])
    assert len(jax.local_devices()) == 2, jax.local_devices()
    results = {"devices": [str(d) for d in jax.local_devices()]}
    t0 = time.monotonic()
    results["step"] = _step_checks(data)
    t1 = time.monotonic()
    tl, _ = loaders(data, load_config(BASE))
    # the same training on two devices and on one device with the steps' batches merged
    results["par"] = _run(out / "par", data)
    results["one"] = _run(out / "one", data, ["training.data_parallel=off"], MergedLoader(tl, 2))
    # a bootstrapped ensemble: members vmapped inside the per-device step, each weighting the
    # structures of every device's batch with its own draw counts
    ens = ["ensemble.size=2", "ensemble.bootstrap=true"]
    results["par_ens"] = _run(out / "par_ens", data, ens)
    results["one_ens"] = _run(out / "one_ens", data, ["training.data_parallel=off", *ens], MergedLoader(tl, 2))
    # on two devices, stopped after its first step (time limit), then resumed
    results["stopped"] = _run(out / "resumed", data, ["training.max_time_min=1e-6"])
    results["stopped_meta"] = {k: v for k, v in checkpoint_meta(out / "resumed", "latest").items()
                               if k in ("epoch", "batch", "step", "devices")}
    shutil.copytree(out / "resumed", out / "switched")
    results["resumed"] = _run(out / "resumed", data)
    # the same mid-epoch checkpoint continued on one device
    results["switched"] = _run(out / "switched", data, ["training.data_parallel=off"])
    # the NaN guard names the batches of the step
    poisoned = PoisonedLoader(tl, epoch=1, batch=3)
    try:
        _run(out / "poisoned", data, train_loader=poisoned)
        results["poisoned"] = None
    except TrainingDiverged as exc:
        results["poisoned"] = {"message": str(exc), "structure": poisoned.poisoned}
    results["seconds"] = {"step_checks": t1 - t0, "training": time.monotonic() - t1}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("parallel_data"))


@pytest.fixture(scope="module")
def two_devices(data, tmp_path_factory):
    """Run the 2-device script once; its output directory and results."""
    out = tmp_path_factory.mktemp("parallel_runs")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
               JAX_COMPILATION_CACHE_DIR=str(data / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.run([sys.executable, "-m", "tests.test_parallel", str(out), str(data)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def test_batches_are_placed_one_per_device(two_devices):
    _, res = two_devices
    p = res["step"]["placement"]
    assert len(res["devices"]) == 2 and p["n_devices"] == 2 and p["device_set"] == 2
    assert p["spec"] == ["data"] and len(p["shard_devices"]) == 2
    assert len(p["shard_shapes"]) == 2 and all(s[0] == 1 for s in p["shard_shapes"])  # one batch each
    assert p["shard0_is_b1"] and p["pad_graphs_on_device1"] == 0


def test_two_device_step_equals_one_device_on_the_union(two_devices):
    _, res = two_devices
    r = res["step"]["pairtest"]
    assert r["loss"][1] == pytest.approx(r["loss"][0], rel=RTOL)
    assert r["sums"] < RTOL and r["grad"] < 1e-4 and r["grad_moves"] > 0 and r["grad_finite"]
    assert r["grad_replicated"]
    # a device slot filled with an all-padding batch adds nothing
    assert r["padded_loss"][1] == pytest.approx(r["padded_loss"][0], rel=RTOL)
    assert r["padded_sums"] < RTOL and r["padded_grad"] < 1e-4


def test_physnet_under_shard_map(two_devices):
    _, res = two_devices
    r = res["step"]["physnet"]
    assert r["terms"] == ["charge_n", "dipole_n", "energy_n", "forces_n", "nh_loss_n"]
    assert r["finite"] and r["errors"] > 0
    assert r["sums"] < RTOL and r["padded_sums"] < RTOL


def test_two_device_training_equals_one_device_on_merged_batches(two_devices, data):
    from mmlwf.training import load_config, load_params, read_history

    out, res = two_devices
    par, one = res["par"], res["one"]
    assert par["status"] == one["status"] == "completed" and par["devices"] == 2 and one["devices"] == 1
    tl, _ = loaders(data, load_config(BASE))
    assert par["steps"] == one["steps"] < EPOCHS * len(tl)  # fewer steps than batches
    assert par["train_step_shapes"] == len({s[2] for e in range(EPOCHS) for s in tl.plan(e)})
    hp, h1 = read_history(out / "par" / "history.csv"), read_history(out / "one" / "history.csv")
    assert [r["step"] for r in hp] == [r["step"] for r in h1]
    for rp, r1 in zip(hp, h1):
        for k in rp:
            if k not in ("epoch", "step", "padding_efficiency", *RUN_DEPENDENT):  # other batches
                assert rp[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), (rp["epoch"], k)  # charge errors: ~1e-9 noise
    assert hp[-1]["train_loss"] < 0.7 * hp[0]["train_loss"]
    # checkpoints of the 2-device run read back in this 1-device process
    for which in ("latest", "best"):
        pp, _ = load_params(out / "par", which)
        p1, _ = load_params(out / "one", which)
        assert _rel(pp, p1) < 1e-4
    log = (out / "par" / "train.log").read_text()
    assert "data parallel over 2 devices" in log


def test_two_device_ensemble_equals_one_device_on_merged_batches(two_devices):
    """A (bootstrapped) ensemble's members are vmapped inside the per-device step: 2 devices train
    the same members as one device on the steps' merged batches."""
    from mmlwf.training import load_params, read_history

    out, res = two_devices
    assert res["par_ens"]["status"] == res["one_ens"]["status"] == "completed"
    assert res["par_ens"]["devices"] == 2 and res["par_ens"]["steps"] == res["one_ens"]["steps"]
    hp, h1 = read_history(out / "par_ens" / "history.csv"), read_history(out / "one_ens" / "history.csv")
    for rp, r1 in zip(hp, h1, strict=True):
        for k in ("train_loss", "valid_loss", "valid_loss_m0", "valid_loss_m1", "valid_forces_mae_eV_per_A"):
            assert rp[k] == pytest.approx(r1[k], rel=1e-4), (rp["epoch"], k)
    pp, info = load_params(out / "par_ens", "latest")
    p1, _ = load_params(out / "one_ens", "latest")
    assert info["ensemble"]["size"] == 2 and all(np.shape(x)[0] == 2 for x in jax.tree.leaves(pp))
    assert _rel(pp, p1) < 1e-4


def test_two_device_resume_is_exact(two_devices):
    from mmlwf.training import checkpoint_meta, load_params, read_history

    out, res = two_devices
    stopped = res["stopped"]
    assert stopped["status"] == "time_limit" and stopped["steps"] == 1
    assert res["resumed"]["status"] == "completed" and res["resumed"]["steps"] == res["par"]["steps"]
    assert "resumed from checkpoint" in (out / "resumed" / "train.log").read_text()
    ha = read_history(out / "par" / "history.csv")
    hb = read_history(out / "resumed" / "history.csv")
    assert [{k: v for k, v in r.items() if k not in RUN_DEPENDENT} for r in ha] == \
        [{k: v for k, v in r.items() if k not in RUN_DEPENDENT} for r in hb]
    for x, y in zip(jax.tree.leaves(load_params(out / "par", "latest", ema=False)[0]),
                    jax.tree.leaves(load_params(out / "resumed", "latest", ema=False)[0])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert checkpoint_meta(out / "par", "latest")["devices"] == 2


def test_two_device_nan_guard_names_the_batches_of_the_step(two_devices):
    from mmlwf.training import checkpoint_meta

    out, res = two_devices
    got = res["poisoned"]
    assert got is not None
    msg = got["message"]
    assert "\n" not in msg and "non-finite" in msg and "epoch 2, batches " in msg and "2 devices" in msg
    assert f"[{got['structure']}," in msg or f"[{got['structure']}]" in msg
    meta = checkpoint_meta(out / "poisoned", "latest")
    assert (meta["epoch"], meta["batch"]) == (1, 0)


# ----------------------------------------------------------------------------- host side, one device


def test_two_device_checkpoint_resumes_on_one_device(two_devices, data):
    """A mid-epoch checkpoint of the 2-device run continues on one device from the same loader
    batch; the steps are one batch each from there on."""
    from mmlwf.training import load_config

    out, res = two_devices
    assert res["stopped_meta"] == {"epoch": 0, "batch": 2, "step": 1, "devices": 2}
    got = res["switched"]
    assert got["status"] == "completed" and got["devices"] == 1
    tl, _ = loaders(data, load_config(BASE))
    assert got["steps"] == 1 + (len(tl.plan(0)) - 2) + sum(len(tl.plan(e)) for e in range(1, EPOCHS))
    log = (out / "switched" / "train.log").read_text()
    assert "the checkpoint's steps ran on 2 device(s), this run's on 1" in log


def test_grouping_and_padding_batch(data):
    from mmlwf.batching import BatchLoader
    from mmlwf.training import load_config
    from mmlwf.training.losses import prepare_batch, reference_table
    from mmlwf.training.parallel import group_batches, group_sizes, padding_batch

    assert group_sizes("aaabaaab", 2) == [2, 1, 1, 2, 1, 1]
    assert group_sizes("aaaa", 1) == [1, 1, 1, 1] and group_sizes([], 2) == []
    assert [len(g) for g in group_batches([{"x": np.zeros(k)} for k in (3, 3, 3, 2, 3)], 2)] == [2, 1, 1, 1]
    tl, _ = loaders(data, load_config(BASE))
    assert isinstance(tl, BatchLoader)
    table = reference_table(element_energies(data))
    for sid in range(len(tl.budgets)):
        real = prepare_batch(tl.assemble(0, tl.plan(0)[0][1][:1], sid), table)
        empty = prepare_batch(tl.assemble(0, np.zeros(0, np.int64), sid), table)  # the loader's own padding
        pad = padding_batch(real)
        assert pad.keys() == empty.keys()
        for k in pad.keys():
            np.testing.assert_array_equal(pad[k], empty[k], err_msg=k)
            assert pad[k].dtype == empty[k].dtype


def test_one_device_and_config(tmp_path):
    from mmlwf.errors import ConfigError
    from mmlwf.training import load_config
    from mmlwf.training.config import config_changes
    from mmlwf.training.engine import data_parallel

    c = load_config(BASE)
    assert c.training.data_parallel == "auto"
    assert load_config(BASE, ["training.data_parallel=off"]).training.data_parallel == "off"
    with pytest.raises(ConfigError, match="training.data_parallel"):
        load_config(BASE, ["training.data_parallel=always"])
    if len(jax.local_devices()) == 1:
        assert data_parallel("auto") is None  # the plain single-device step
    assert data_parallel("off") is None
    # a run stored before the key existed resumes; switching it is allowed on resume
    stored = c.to_dict()
    del stored["training"]["data_parallel"]
    assert config_changes(stored, c.to_dict()) == []
    assert config_changes(c.to_dict(), load_config(BASE, ["training.data_parallel=off"]).to_dict()) == []


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
