"""Training engine: config, losses, optimiser, checkpoints, exact resume, signals, NaN guard.

A tiny stand-in model with the PhysNet call signature (per-element energies plus a smooth
pair term, charges constrained to the total charge, dipole from the charges) is trained on
water and methane conformers labelled by ASE's EMT. Interrupted runs (SIGKILL, SIGTERM) run
in a subprocess: this file doubles as the script (``python -m tests.test_training``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmlwf.errors import ConfigError
from mmlwf.training import (
    EXIT_INTERRUPTED,
    TrainingDiverged,
    checkpoint_meta,
    load_config,
    load_params,
    read_history,
    train,
)

from mmlwf.training.history import RUN_DEPENDENT_COLUMNS as RUN_DEPENDENT

REPO = Path(__file__).resolve().parents[1]
CUTOFF = 3.0
QREF = {1: 0.4, 6: -1.6, 8: -0.8}  # charges that make the reference dipoles
BASE = {
    "model": {"type": "pairtest", "cutoff": CUTOFF},
    "training": {
        "batch_size": 8,
        "learning_rate": 1.0e-2,
        "optimizer": "adamw",
        "weight_decay": 1.0e-4,
        "clip_norm": 10.0,
        "schedule": "warmup_cosine",
        "warmup_steps": 3,
        "ema_decay": 0.9,
        "max_epochs": 6,
        "seed": 0,
    },
}


class PairModel(nn.Module):
    """Stand-in with the PhysNet API: element energies + smooth pair energies, charges, dipole."""

    n_basis: int = 8
    cutoff: float = CUTOFF

    @nn.compact
    def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot):
        B, A = graph_mask.shape[0], Z.shape[0]
        m = atom_mask.astype(R.dtype)
        e_atom = nn.Embed(119, 1, embedding_init=nn.initializers.zeros)(Z)[:, 0]
        emb = nn.Embed(119, 4)(Z)
        d = R[dst] - R[src]
        r = jnp.sqrt(jnp.where(pair_mask, jnp.sum(d * d, axis=-1), 1.0))
        fc = jnp.where(r < self.cutoff, 0.5 * (jnp.cos(jnp.pi * r / self.cutoff) + 1.0), 0.0)
        rbf = jnp.exp(-4.0 * (r[:, None] - jnp.linspace(0.5, self.cutoff, self.n_basis)) ** 2) * fc[:, None]
        coef = nn.Dense(self.n_basis)(jnp.concatenate([emb[dst] + emb[src], emb[dst] * emb[src]], axis=-1))
        e_pair = jnp.sum(coef * rbf, axis=-1) * pair_mask
        e_i = (e_atom + 0.5 * jax.ops.segment_sum(e_pair, dst, A)) * m
        q0 = nn.Embed(119, 1, embedding_init=nn.initializers.zeros)(Z)[:, 0] * m
        n = jnp.maximum(jax.ops.segment_sum(m, atom_graph, B), 1.0)
        q = (q0 - ((jax.ops.segment_sum(q0, atom_graph, B) - Qtot) / n)[atom_graph]) * m
        return {
            "energy": jax.ops.segment_sum(e_i, atom_graph, B),
            "charges": q,
            "dipole": jax.ops.segment_sum(q[:, None] * R, atom_graph, B),
        }


# ----------------------------------------------------------------------------- data and runs


def make_data(out: Path, n_water: int = 40, n_methane: int = 24, seed: int = 0) -> Path:
    """Packed dataset, split (16 valid) and stats of EMT-labelled water and methane."""
    from ase.build import molecule
    from ase.calculators.emt import EMT

    from mmlwf.packed import PackedWriter
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats
    from mmlwf.structure import Structure

    rng = np.random.default_rng(seed)
    structures = []
    for name, count in (("H2O", n_water), ("CH4", n_methane)):
        for _ in range(count):
            atoms = molecule(name)
            atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
            atoms.calc = EMT()
            q = np.array([QREF[z] for z in atoms.numbers])
            structures.append(Structure(Z=atoms.numbers, R=atoms.positions, E=atoms.get_potential_energy(),
                                        F=atoms.get_forces(), D=(q[:, None] * atoms.positions).sum(0)))
    with PackedWriter(out / "packed") as w:
        for k in rng.permutation(len(structures)):
            w.add(structures[k])
    split_dataset(out / "packed", out / "split.npz", valid=16, test=0, seed=0)
    write_stats(compute_stats(out / "packed", out / "split.npz"), out / "stats.json")
    return out


def loaders(data: Path, config):
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split

    ds = PackedDataset(data / "packed")
    sp = load_split(data / "split.npz")
    t = config.training
    tl = BatchLoader(ds, sp.train, batch_size=t.batch_size, cutoff=CUTOFF, seed=t.seed, n_shapes=2)
    vl = BatchLoader(ds, sp.valid, batch_size=t.batch_size, cutoff=CUTOFF, seed=t.seed, n_shapes=1, shuffle=False)
    return tl, vl


def element_energies(data: Path) -> dict:
    return json.loads((data / "stats.json").read_text())["element_energies_by_Z"]


def run_training(run_dir, data: Path, overrides=(), train_loader=None, **kwargs) -> dict:
    config = load_config(BASE, overrides)
    tl, vl = loaders(data, config)
    return train(run_dir, model=PairModel(), config=config, train_loader=train_loader or tl, valid_loader=vl,
                 element_energies=element_energies(data), progress=False, **kwargs)


def start_subprocess(run_dir, data: Path, *args) -> subprocess.Popen:
    # the subprocesses share a persistent compilation cache (same programs: same executables)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(data / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen([sys.executable, "-m", "tests.test_training", str(run_dir), str(data), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main(argv) -> int:
    """Subprocess entry: ``RUN_DIR DATA_DIR [--sigterm-at EPOCH,BATCH] [overrides...]``."""
    run_dir, data, rest = argv[0], Path(argv[1]), list(argv[2:])
    on_step = None
    if rest and rest[0] == "--sigterm-at":
        at = tuple(int(x) for x in rest[1].split(","))
        rest = rest[2:]

        def on_step(epoch, batch):
            if (epoch, batch) == at:
                os.kill(os.getpid(), signal.SIGTERM)

    summary = run_training(run_dir, data, rest, on_step=on_step)
    print(json.dumps(summary))
    return summary["exit_code"]


def history_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_history(a, b, skip: tuple[str, ...] = ()):
    """Every metric of every epoch equal as written (full float repr), times and compilation
    counts aside (the padding efficiency included: the same batches); ``skip``: prefixes of
    columns not compared."""
    ra, rb = history_rows(a), history_rows(b)
    assert [r["epoch"] for r in rb] == [r["epoch"] for r in ra]
    for x, y in zip(ra, rb):
        diff = {k: (x[k], y[k]) for k in x
                if k not in RUN_DEPENDENT and not k.startswith(skip) and x[k] != y[k]}
        assert not diff, f"epoch {x['epoch']} differs: {diff}"


def assert_same_latest_params(a, b):
    pa, _ = load_params(a, "latest", ema=False)
    pb, _ = load_params(b, "latest", ema=False)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("training_data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run of BASE (in this process)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    before = signal.getsignal(signal.SIGTERM)
    summary = run_training(run_dir, data)
    assert signal.getsignal(signal.SIGTERM) is before  # handler only inside train()
    return run_dir, summary


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until the subprocess has committed its first `latest` checkpoint (generous: a loaded CI
    machine takes minutes to import, compile and write)."""
    latest = run_dir / "checkpoints" / "latest"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
            return
        time.sleep(0.01)
    raise AssertionError(f"no committed 'latest' checkpoint appeared ({proc.poll()=})")


# ----------------------------------------------------------------------------- config


def test_config_defaults_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {type: physnet, cutoff: 5.0, features: 64}\ntraining: {learning_rate: 1e-3, max_epochs: 7}\n")
    c = load_config(path, ["training.max_epochs=5", "model.features=32", "model.extra.depth=2",
                           "training.max_time_min=null", "training.clip_norm=1.5"])
    assert c.training.max_epochs == 5 and c.training.learning_rate == 1e-3  # "1e-3" is a YAML 1.1 string
    assert c.model == {"type": "physnet", "cutoff": 5.0, "features": 32, "extra": {"depth": 2}}
    assert c.training.batch_atoms == 88 and c.training.optimizer == "adam" and c.training.clip_norm == 1.5
    assert load_config(c.to_dict()) == c  # the resolved form reads back to the same config

    def error(*args) -> str:
        with pytest.raises(ConfigError) as exc:
            load_config(*args)
        msg = str(exc.value)
        assert "\n" not in msg
        return msg

    assert "training.lerning_rate" in error(path, ["training.lerning_rate=0.1"])
    assert "did you mean 'training.learning_rate'" in error(path, ["training.lerning_rate=0.1"])
    assert "training.learning_rate" in error(path, ["training.learning_rate=-0.001"])
    assert "training.batch_size" in error(path, ["training.batch_size=2.5"])
    assert "training.optimizer" in error(path, ["training.optimizer=rmsprop"])
    assert "training.weight_decay" in error(path, ["training.weight_decay=0.01"])  # needs adamw
    assert "training.ema_decay" in error(path, ["training.ema_decay=1.0"])
    assert "unknown setting 'optimiser'" in error({"optimiser": {}})
    assert "training.bogus" in error({"training": {"bogus": 1}})
    assert "section.key=value" in error(path, ["training.max_epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {seed: 0}\ntrainng: {}\n")
    assert "trainng" in error(bad)


def test_schedules_and_plateau():
    from mmlwf.training.config import training_config
    from mmlwf.training.optim import Plateau, schedule_fn

    cos = schedule_fn(training_config({"schedule": "warmup_cosine", "learning_rate": 1.0, "warmup_steps": 4,
                                       "decay_steps": 14, "min_learning_rate": 0.1, "max_epochs": 2}), 7)
    assert float(cos(0)) == pytest.approx(0.25) and float(cos(3)) == pytest.approx(1.0)
    assert float(cos(9)) == pytest.approx(0.55) and float(cos(100)) == pytest.approx(0.1)
    exp = schedule_fn(training_config({"schedule": "exponential", "learning_rate": 1.0, "decay_rate": 0.5,
                                       "warmup_steps": 0}), 10)
    assert float(exp(20)) == pytest.approx(0.25)
    cfg = training_config({"schedule": "plateau", "plateau_patience": 2, "plateau_factor": 0.5, "learning_rate": 1e-3})
    p = Plateau()
    cuts = [p.observe(v, cfg) for v in (1.0, 0.9, 0.95, 0.92, 0.91, 0.93)]
    assert cuts == [False, False, False, True, False, True] and p.factor == 0.25
    assert Plateau.from_dict(p.to_dict()) == p


# ----------------------------------------------------------------------------- training


def test_loss_goes_down_and_run_directory(reference, data):
    run_dir, summary = reference
    assert summary["status"] == "completed" and summary["exit_code"] == 0 and summary["epochs"] == 6
    rows = read_history(run_dir / "history.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["valid_loss"] < 0.7 * rows[0]["valid_loss"]
    for col in ("train_loss", "valid_loss", "valid_energy_mae_eV", "valid_energy_rmse_eV",
                "valid_forces_mae_eV_per_A", "valid_forces_rmse_eV_per_A", "valid_dipole_mae_eA",
                "valid_charge_mae_e", "learning_rate", "wall_time_s"):
        assert col in rows[0] and rows[-1][col] is not None
    assert rows[-1]["valid_forces_rmse_eV_per_A"] >= rows[-1]["valid_forces_mae_eV_per_A"] > 0
    info = json.loads((run_dir / "model.json").read_text())
    assert info["model"] == BASE["model"] and info["units"]["energy"] == "eV" and info["ema"] is True
    assert info["element_energies_by_Z"] == pytest.approx(element_energies(data))
    # the parameter count, recorded at training time: the size of the checkpoint's parameters
    params, _ = load_params(run_dir, ema=False)
    assert info["n_parameters"] == sum(np.size(x) for x in jax.tree.leaves(params)) > 0
    assert load_config(run_dir / "config.yaml").training.max_epochs == 6
    # one compilation per batch shape the training loader used, and the count in the log
    config = load_config(BASE)
    tl, _ = loaders(data, config)
    shapes = {spec[2] for e in range(6) for spec in tl.plan(e)}
    assert summary["train_step_shapes"] == len(shapes) and summary["eval_step_shapes"] == 1
    log = (run_dir / "train.log").read_text()
    assert f"XLA compilations: {summary['compilations']} (train step: {len(shapes)} shapes" in log
    # a finished run has nothing left to do
    again = run_training(run_dir, data)
    assert again["status"] == "completed" and again["steps"] == summary["steps"]
    assert len(read_history(run_dir / "history.csv")) == 6


def test_best_checkpoint_and_ema_used_for_validation(reference, data):
    from mmlwf.training.engine import evaluate_sums
    from mmlwf.training.losses import loss_from_sums, reference_table
    from mmlwf.training.state import make_eval_step, make_forward

    run_dir, summary = reference
    rows = read_history(run_dir / "history.csv")
    best = min(rows, key=lambda r: r["valid_loss"])
    assert summary["best_epoch"] == best["epoch"] == checkpoint_meta(run_dir, "best")["epoch"]
    assert sorted(p.name for p in (run_dir / "checkpoints" / "best").iterdir() if p.name.isdigit()) == [
        str(best["epoch"])]
    ema, info = load_params(run_dir)  # the EMA parameters by default
    raw, _ = load_params(run_dir, ema=False)
    assert info["ema"] is True
    _, vl = loaders(data, load_config(BASE))
    step = make_eval_step(make_forward(PairModel()))
    table = reference_table(element_energies(data))
    weights = {"energy": 1.0, "forces": 50.0, "dipole": 25.0, "charge": 10.0}
    loss_ema = float(loss_from_sums(evaluate_sums(step, ema, vl, table), weights, "per_molecule"))
    loss_raw = float(loss_from_sums(evaluate_sums(step, raw, vl, table), weights, "per_molecule"))
    assert loss_ema == pytest.approx(best["valid_loss"], rel=1e-6)
    assert abs(loss_raw - best["valid_loss"]) > 1e-6 * best["valid_loss"]


def test_resume_after_sigkill_equals_uninterrupted(reference, data, tmp_path):
    ref_dir, ref = reference
    run_dir = tmp_path / "run"
    proc = start_subprocess(run_dir, data)
    try:
        wait_for_checkpoint(run_dir, proc)
        proc.kill()  # SIGKILL, right after the first 'latest' checkpoint
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(history_rows(run_dir)) < 6
    summary = run_training(run_dir, data)
    assert summary["status"] == "completed" and summary["steps"] == ref["steps"]
    assert "resumed from checkpoint" in (run_dir / "train.log").read_text()
    assert_same_history(ref_dir, run_dir)
    assert_same_latest_params(ref_dir, run_dir)


def test_sigterm_checkpoints_mid_epoch_exits_cleanly_and_resumes(reference, data, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    proc = start_subprocess(run_dir, data, "--sigterm-at", "2,3")  # 3rd epoch, after its 3rd batch
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    assert "Traceback" not in err
    log = (run_dir / "train.log").read_text()
    assert "SIGTERM: stopped in epoch 3 after 3/" in log and "checkpoint written" in log
    meta = checkpoint_meta(run_dir, "latest")
    assert (meta["epoch"], meta["batch"], meta["status"]) == (2, 3, "interrupted")
    assert len(history_rows(run_dir)) == 2
    with pytest.raises(ConfigError, match="training.learning_rate"):
        run_training(run_dir, data, ["training.learning_rate=0.5"])
    summary = run_training(run_dir, data)
    assert summary["status"] == "completed"
    assert_same_history(ref_dir, run_dir)
    assert_same_latest_params(ref_dir, run_dir)


def test_a_run_written_by_the_dict_loop_resumes_to_the_uninterrupted_run(reference, data, tmp_path):
    # tests/fixtures/run_v1_interrupted: this file's BASE run as the training loop wrote it
    # before its host state was typed (LoopState), stopped by SIGTERM at epoch 2, batch 3
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v1_interrupted", run_dir)
    assert (checkpoint_meta(run_dir, "latest")["epoch"], checkpoint_meta(run_dir, "latest")["batch"]) == (1, 3)
    summary = run_training(run_dir, data)
    assert summary["status"] == "completed" and summary["epochs"] == 6
    assert "resumed from checkpoint 2: epoch 1 + 3 batches, step 10" in (run_dir / "train.log").read_text()
    # the fixture was written before the EMA decay ramped up (optim.EMA_RAMP): the EMA weights,
    # which validation uses, differ since; the training trajectory does not. Its first batches
    # ran on another machine, whose CPU XLA compiles float32 sums for differently (last-bit
    # differences), so the continuation is checked to float32 rounding; the resume tests
    # above, on one machine, check it bit for bit
    ra, rb = history_rows(ref_dir), history_rows(run_dir)
    assert [r["epoch"] for r in rb] == [r["epoch"] for r in ra]
    # the gradient norms were not summed then: unknown for epoch 1 and for epoch 2, resumed midway
    assert [r["train_grad_norm"] == "" for r in rb] == [True, True, False, False, False, False]
    for x, y in zip(ra, rb):
        for k in x:
            if k == "train_grad_norm" and y[k] == "":
                continue
            if k not in RUN_DEPENDENT and not k.startswith("valid_") and x[k] != y[k]:
                assert float(y[k]) == pytest.approx(float(x[k]), rel=1e-5, abs=1e-8), (x["epoch"], k)
    pa, _ = load_params(ref_dir, "latest", ema=False)
    pb, _ = load_params(run_dir, "latest", ema=False)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


class PoisonedLoader:
    """Wraps a loader; in epoch ``epoch`` the ``batch``-th batch gets an absurd energy."""

    def __init__(self, inner, epoch: int, batch: int) -> None:
        self.inner, self.at, self.poisoned = inner, (epoch, batch), None

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, e: int = 0):
        for b, batch in enumerate(self.inner.epoch(e), start=1):
            if (e, b) == self.at:
                batch = dict(batch, E=batch["E"].copy())
                batch["E"][0] = 1e300  # finite in float64, inf as a float32 target
                self.poisoned = int(batch["index"][0])
            yield batch


def test_nan_guard_names_epoch_step_structures_and_keeps_checkpoint(data, tmp_path):
    config = load_config(BASE)
    tl, _ = loaders(data, config)
    poisoned = PoisonedLoader(tl, epoch=1, batch=3)
    with pytest.raises(TrainingDiverged) as exc:
        run_training(tmp_path, data, train_loader=poisoned)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "epoch 2, step 3 of the epoch" in msg and "non-finite" in msg
    assert f"structures [{poisoned.poisoned}," in msg or f"structures [{poisoned.poisoned}]" in msg
    meta = checkpoint_meta(tmp_path, "latest")
    assert (meta["epoch"], meta["batch"]) == (1, 0)  # the last good checkpoint: after epoch 1
    assert len(history_rows(tmp_path)) == 1
    assert "stopped: non-finite" in (tmp_path / "train.log").read_text()


def test_latest_checkpoint_interval_writes_fewer_and_best_with_latest(data, tmp_path, monkeypatch):
    from mmlwf.training.checkpoint import CheckpointStore

    writes = []
    save_latest, save_best = CheckpointStore.save_latest, CheckpointStore.save_best

    def latest(self, state, meta):
        writes.append(("latest", meta["epoch"]))
        return save_latest(self, state, meta)

    def best(self, epoch, *args):
        writes.append(("best", epoch))
        return save_best(self, epoch, *args)

    monkeypatch.setattr(CheckpointStore, "save_latest", latest)
    monkeypatch.setattr(CheckpointStore, "save_best", best)
    every = run_training(tmp_path / "every", data, ["training.checkpoint_interval_min=0"])
    assert [e for w, e in writes if w == "latest"] == [1, 2, 3, 4, 5, 6]
    writes.clear()
    rare = run_training(tmp_path / "rare", data, ["training.checkpoint_interval_min=1000"])
    # the first epoch of the invocation and the end; the best epoch's copy with the next latest
    assert [w for w in writes if w[0] == "latest"] == [("latest", 1), ("latest", 6)]
    assert [w for w in writes if w[0] == "best"] == ([("best", 1)] if rare["best_epoch"] > 1 else []) + [
        ("best", rare["best_epoch"])]
    assert writes.index(("best", rare["best_epoch"])) < writes.index(("latest", 6))
    assert rare["best_epoch"] == every["best_epoch"] == checkpoint_meta(tmp_path / "rare", "best")["epoch"]
    assert_same_history(tmp_path / "every", tmp_path / "rare")
    assert_same_latest_params(tmp_path / "every", tmp_path / "rare")
    for ema in (False, True):  # the best copies were taken before the next steps changed the state
        pa, _ = load_params(tmp_path / "every", "best", ema=ema)
        pb, _ = load_params(tmp_path / "rare", "best", ema=ema)
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_time_limit_stops_with_a_resumable_checkpoint(data, tmp_path):
    summary = run_training(tmp_path, data, ["training.max_time_min=1e-6"])
    assert summary["status"] == "time_limit" and summary["exit_code"] == 0 and summary["steps"] == 1
    meta = checkpoint_meta(tmp_path, "latest")
    assert (meta["epoch"], meta["batch"], meta["status"]) == (0, 1, "time_limit")


# ----------------------------------------------------------------------------- steps


def _water_batches(data: Path):
    """Two batches of 4 water molecules and one batch of all 8 (same molecules)."""
    from mmlwf.batching import BatchLoader, Budget
    from mmlwf.packed import PackedDataset
    from mmlwf.training.losses import prepare_batch, reference_table

    ds = PackedDataset(data / "packed")
    water = np.flatnonzero(np.asarray(ds.n_atoms) == 3)[:8]
    loader = BatchLoader(ds, water, cutoff=CUTOFF, shuffle=False, budgets=[Budget(9, 32, 64), Budget(5, 16, 32)])
    table = reference_table(element_energies(data))
    a = prepare_batch(loader.assemble(0, np.arange(4), 1), table)
    b = prepare_batch(loader.assemble(0, np.arange(4, 8), 1), table)
    ab = prepare_batch(loader.assemble(0, np.arange(8), 0), table)
    assert a["graph_mask"].sum() == b["graph_mask"].sum() == 4 and ab["graph_mask"].sum() == 8
    return a, b, ab


def test_accumulation_equals_larger_batch_and_ema_update(data):
    from mmlwf.training.config import training_config
    from mmlwf.training.losses import model_inputs
    from mmlwf.training.optim import make_optimizer
    from mmlwf.training.state import init_state, make_forward, make_train_step

    a, b, ab = _water_batches(data)
    model = PairModel()
    forward = make_forward(model)
    weights = {"energy": 1.0, "forces": 50.0, "dipole": 25.0}
    settings = {"optimizer": "adamw", "weight_decay": 1e-3, "clip_norm": 1.0, "learning_rate": 1e-2,
                "warmup_steps": 0, "ema_decay": 0.5}
    params0 = model.init(jax.random.PRNGKey(1), *model_inputs(ab))
    one = np.float32(1.0)

    def copy(tree):
        return jax.tree.map(jnp.array, tree)

    cfg2 = training_config({**settings, "accumulate": 2})
    tx2 = make_optimizer(cfg2, 10)
    step2 = make_train_step(forward, tx2, weights, "per_molecule", cfg2.ema_decay)
    s = init_state(copy(params0), tx2, ema=True)
    s, _ = step2(s, a, one)  # accumulating: nothing moves yet
    for x, y in zip(jax.tree.leaves(s["params"]) + jax.tree.leaves(s["ema_params"]), jax.tree.leaves(params0) * 2):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    s, _ = step2(s, b, one)
    acc_params, acc_ema = s["params"], s["ema_params"]

    cfg1 = training_config(settings)
    tx1 = make_optimizer(cfg1, 10)
    step1 = make_train_step(forward, tx1, weights, "per_molecule", cfg1.ema_decay)
    s1, _ = step1(init_state(copy(params0), tx1, ema=True), ab, one)

    moved = 0.0
    for p0, pa, p1, ea, e1 in zip(*(jax.tree.leaves(t) for t in (params0, acc_params, s1["params"], acc_ema,
                                                                  s1["ema_params"]))):
        np.testing.assert_allclose(np.asarray(pa), np.asarray(p1), rtol=2e-5, atol=2e-6)
        # the first update's decay is min(0.5, 1/10): the average starts near the parameters
        np.testing.assert_allclose(np.asarray(e1), 0.1 * np.asarray(p0) + 0.9 * np.asarray(p1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(ea), np.asarray(e1), rtol=2e-5, atol=2e-6)
        moved = max(moved, float(np.abs(np.asarray(p1) - np.asarray(p0)).max()))
    assert moved > 1e-3  # a real update happened


def test_ema_decay_ramps_up_to_the_setting():
    """min(decay, (1 + t) / (10 + t)) at update t (from 0), counted by the optimiser (not
    by accumulation steps), so a resumed run continues the ramp."""
    from mmlwf.training.config import training_config
    from mmlwf.training.optim import ema_decay_at, make_optimizer

    tx = make_optimizer(training_config({"accumulate": 2, "warmup_steps": 0}), 10)
    params = {"w": jnp.ones(3)}
    opt_state, seen = tx.init(params), []
    for _ in range(80):
        _, opt_state = tx.update(params, opt_state, params)
        seen.append(float(ema_decay_at(0.75, opt_state)))
    expected = [min(0.75, (1 + t) / (10 + t)) for t in range(40)]
    np.testing.assert_allclose(seen[1::2], expected, rtol=1e-6)  # after each real update
    assert seen[-1] == 0.75



def test_step_metrics_one_array_exact():
    """A step's metrics come to the host as one array and read back exactly as each scalar was
    (names in jax's dict order, the flag ok as 1/0)."""
    from mmlwf.training.step_metrics import pack_metrics

    m = {"ok": jnp.bool_(False), "loss": jnp.float32(np.nan), "grad_norm": jnp.float32(3.0e-7),
         "energy_sse": jnp.float32(123456.79), "energy_n": jnp.float32(16.0)}
    packed = jax.jit(pack_metrics)(m)
    assert len(jax.tree.leaves(packed)) == 1
    host, ref = packed.to_host(), jax.device_get(m)
    assert list(host) == list(ref) == sorted(m)
    for k in ref:
        np.testing.assert_array_equal(np.float64(host[k]), np.float64(ref[k]))
    assert not bool(host["ok"])


def test_step_metrics_float64_widens_losslessly(x64):
    from mmlwf.training.step_metrics import pack_metrics

    wide = jax.jit(pack_metrics)({"a": jnp.float64(0.1), "b": jnp.float32(0.1)}).to_host()
    assert wide["a"].dtype == np.float64 and wide["a"] == 0.1 and wide["b"] == np.float64(np.float32(0.1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
