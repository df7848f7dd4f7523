"""Training across processes (:mod:`mmlwf.training.distributed`): two processes versus one.

The two processes are started by the local launcher (:func:`mmlwf.commands.launch.launch`,
what ``mmlwf train --num-processes 2`` uses) running this file as a script
(``python -m tests.test_distributed OUT DATA``): each joins the other through
``jax.distributed`` (gloo CPU collectives, one CPU device each), trains the stand-in model of
tests/test_training.py on water and methane (3- and 5-atom molecules mixed in every shard, so
a per-shard normalisation would show), stops one run after its first step and resumes it, and
records which structures it assembled. The tests compare with a single process whose loader
yields, for every 2-process step, one batch of that step's molecules
(:class:`tests.test_parallel.MergedLoader`), with the tolerances of tests/test_parallel.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.test_parallel import MergedLoader, _rel
from tests.test_training import (
    BASE,
    CUTOFF,
    RUN_DEPENDENT,
    PairModel,
    element_energies,
    make_data,
)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2


def loaders(data: Path, config):
    """Training and validation loaders of one batch shape each (one compilation of each step: the
    grouping of batches of several shapes is tests/test_parallel.py's)."""
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split

    ds, sp, t = PackedDataset(data / "packed"), load_split(data / "split.npz"), config.training
    return (BatchLoader(ds, sp.train, batch_size=t.batch_size, cutoff=CUTOFF, seed=t.seed, n_shapes=1),
            BatchLoader(ds, sp.valid, batch_size=t.batch_size, cutoff=CUTOFF, seed=t.seed, n_shapes=1,
                        shuffle=False))


class Recording:
    """A planned loader that records the batches it assembles (``[epoch, positions]``, the epoch
    of the last plan asked for): this process's shard."""

    def __init__(self, inner) -> None:
        self.inner, self.seen, self.at = inner, [], 0
        self.seed, self.members, self.budgets = inner.seed, inner.members, inner.budgets

    def plan(self, epoch: int = 0):
        self.at = epoch
        return self.inner.plan(epoch)

    def assemble(self, k, positions, shape_id):
        if len(positions):
            self.seen.append([self.at, [int(p) for p in positions]])
        return self.inner.assemble(k, positions, shape_id)

    def epoch(self, epoch: int = 0):
        return (self.assemble(*spec) for spec in self.plan(epoch))

    def __len__(self) -> int:
        return len(self.inner)


def _run(run_dir: Path, data: Path, overrides=(), train_loader=None) -> dict:
    from mmlwf.training import load_config, train

    config = load_config(BASE, [f"training.max_epochs={EPOCHS}", *overrides])
    tl, vl = loaders(data, config)
    return train(run_dir, model=PairModel(), config=config, train_loader=train_loader or tl, valid_loader=vl,
                 element_energies=element_energies(data), progress=False)


def main(argv) -> int:
    """One of the two processes: ``OUT DATA MODE``; writes ``OUT/results<process>.json``. MODE
    ``train``: one training; ``resume``: one stopped after its first step, then resumed."""
    from mmlwf.training import load_config
    from mmlwf.training.distributed import initialize

    out, data, mode = Path(argv[0]), Path(argv[1]), argv[2]
    assert initialize()
    me = jax.process_index()
    res = {"process": me, "processes": jax.process_count(), "devices": len(jax.devices()),
           "local_devices": len(jax.local_devices())}
    t0 = time.monotonic()
    if mode == "train":
        rec = Recording(loaders(data, load_config(BASE))[0])
        res["par"] = _run(out / "par", data, train_loader=rec)
        res["seen"] = rec.seen
    else:
        res["stopped"] = _run(out / "resumed", data, ["training.max_time_min=1e-6"])  # after its first step
        res["resumed"] = _run(out / "resumed", data)
    res["seconds"] = time.monotonic() - t0
    (out / f"results{me}.json").write_text(json.dumps(res, default=str))
    return 0


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("distributed_data"))


def _launch(out: Path, data: Path, mode: str) -> list[dict]:
    """The 2-process script in ``mode``, started by the local launcher; both processes' results."""
    from mmlwf.commands.launch import launch

    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(data / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert launch(["-m", "tests.test_distributed", str(out), str(data), mode], 2, env=env) == 0
    return [json.loads((out / f"results{k}.json").read_text()) for k in range(2)]


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    """One 2-process training: its output directory and both processes' results."""
    out = tmp_path_factory.mktemp("distributed_runs")
    return out, _launch(out, data, "train")


def _rows_equal(a: dict, b: dict) -> bool:
    skip = (*RUN_DEPENDENT, "padding_efficiency")  # costs: each process counts its own batches
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def _rows(path: Path) -> list[dict]:
    from mmlwf.training import read_history

    return [{k: v for k, v in r.items() if k not in RUN_DEPENDENT and k != "padding_efficiency"}
            for r in read_history(path)]


def test_each_process_reads_its_own_shard(two_processes, data):
    """Process k assembles the k-th batch of every step's group (and the first batch, for shapes)."""
    from mmlwf.training import load_config
    from mmlwf.training.parallel import group_sizes

    _, res = two_processes
    assert [r["process"] for r in res] == [0, 1]
    assert all(r["processes"] == 2 and r["devices"] == 2 and r["local_devices"] == 1 for r in res)
    tl, _ = loaders(data, load_config(BASE))
    expected = [set(), set()]
    for e in range(EPOCHS):
        specs, at = tl.plan(e), 0
        for size in group_sizes([tl.budgets[s[2]] for s in specs], 2):
            for k in range(size):
                expected[k].add((e, tuple(int(p) for p in specs[at + k][1])))
            at += size
    first = (0, tuple(int(p) for p in tl.plan(0)[0][1]))
    seen = [{(e, tuple(p)) for e, p in r["seen"]} - {first} for r in res]
    assert seen[0] == expected[0] - {first} and seen[1] == expected[1] - {first}
    assert expected[1] and not expected[0] & expected[1]  # disjoint shards of every epoch
    m = tl.members[0]
    for shard in seen:  # water (3 atoms) and methane (5) in each process's batches
        assert {int(n) for _, p in shard for n in m.ds.n_atoms[m.indices[list(p)]]} == {3, 5}


def test_two_processes_equal_one_process_on_merged_batches(two_processes, data, tmp_path):
    """Loss curves and parameters of the 2-process run equal a 1-process run whose every step
    holds the molecules of the 2-process step."""
    from mmlwf.training import load_config, load_params

    out, res = two_processes
    par = res[0]["par"]
    assert par["status"] == res[1]["par"]["status"] == "completed" and par["devices"] == 2
    assert _rows_equal(res[0]["par"]["last"], res[1]["par"]["last"])  # global metrics on both
    tl, _ = loaders(data, load_config(BASE))
    one = _run(tmp_path / "one", data, ["training.data_parallel=off"], MergedLoader(tl, 2))
    assert one["devices"] == 1 and par["steps"] == one["steps"] < EPOCHS * len(tl)
    hp, h1 = _rows(out / "par" / "history.csv"), _rows(tmp_path / "one" / "history.csv")
    assert len(hp) == len(h1) == EPOCHS
    for rp, r1 in zip(hp, h1, strict=True):
        assert rp.keys() == r1.keys()
        for k in rp:
            assert rp[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), (rp["epoch"], k)
    assert hp[-1]["train_loss"] < hp[0]["train_loss"]
    for which in ("latest", "best"):  # the 2-process checkpoints read back in this one process
        pp, _ = load_params(out / "par", which)
        p1, _ = load_params(tmp_path / "one", which)
        assert _rel(pp, p1) < 1e-4
    log = (out / "par" / "train.log").read_text()
    assert "data parallel over 2 devices in 2 processes" in log
    assert not list(out.glob("par/*.tmp*"))


@pytest.mark.slow
def test_two_process_resume_is_exact(two_processes, data, tmp_path):
    """A 2-process run stopped after its first step (both processes: the time limit is process
    0's clock) and resumed by 2 processes equals the uninterrupted 2-process run, bitwise."""
    from mmlwf.training import checkpoint_meta, load_params

    out, par = two_processes
    res = _launch(out, data, "resume")
    res[0]["par"] = par[0]["par"]
    assert [r["stopped"]["status"] for r in res] == ["time_limit"] * 2  # both stopped after the same step
    assert res[0]["stopped"]["steps"] == 1
    assert res[0]["resumed"]["status"] == "completed" and res[0]["resumed"]["steps"] == res[0]["par"]["steps"]
    assert "resumed from checkpoint" in (out / "resumed" / "train.log").read_text()
    assert _rows(out / "par" / "history.csv") == _rows(out / "resumed" / "history.csv")
    for x, y in zip(jax.tree.leaves(load_params(out / "par", "latest", ema=False)[0]),
                    jax.tree.leaves(load_params(out / "resumed", "latest", ema=False)[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert checkpoint_meta(out / "par", "latest")["devices"] == 2


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(two_processes, data, tmp_path):
    """The 2-process run's checkpoint continues in one process (one device) for another epoch."""
    from mmlwf.training import checkpoint_meta, load_config

    out, res = two_processes
    meta = checkpoint_meta(out / "par", "latest")
    assert (meta["epoch"], meta["batch"], meta["devices"]) == (EPOCHS, 0, 2)
    run = tmp_path / "continued"
    shutil.copytree(out / "par", run)
    got = _run(run, data, [f"training.max_epochs={EPOCHS + 1}"])
    assert got["status"] == "completed" and got["devices"] == 1 and got["epochs"] == EPOCHS + 1
    tl, _ = loaders(data, load_config(BASE))
    assert got["steps"] == res[0]["par"]["steps"] + len(tl.plan(EPOCHS))
    assert "the checkpoint's steps ran on 2 device(s), this run's on 1" in (run / "train.log").read_text()


def test_launcher_exit_codes(tmp_path):
    from mmlwf.commands.launch import launch

    ok = ["-c", "import os, sys; sys.exit(0)"]
    assert launch(ok, 2) == 0
    # child 1 fails at once, child 0 would run for a minute: it is terminated, the failure's code returned
    slow_or_fail = ["-c", ("import os, sys, time; pid = int(os.environ['MMLWF_DISTRIBUTED'].split(',')[2]);"
                           " sys.exit(3) if pid == 1 else time.sleep(60)")]
    t0 = time.monotonic()
    assert launch(slow_or_fail, 2) == 3
    assert time.monotonic() - t0 < 30
    with pytest.raises(ValueError, match="--num-processes"):
        launch(ok, 0)


def test_launcher_forwards_sigterm(tmp_path):
    """SIGTERM to the launcher reaches every child (a training checkpoints and exits 75)."""
    import signal

    child = ("import os, pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); "
             f"pathlib.Path({str(tmp_path)!r}, os.environ['MMLWF_DISTRIBUTED'][-1] + '.ready').touch(); "
             "time.sleep(60)")
    script = f"import sys; from mmlwf.commands.launch import launch; sys.exit(launch(['-c', {child!r}], 2))"
    parent = subprocess.Popen([sys.executable, "-c", script],
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    t0 = time.monotonic()
    while len(list(tmp_path.glob("*.ready"))) < 2 and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 75


@pytest.mark.slow
def test_cli_trains_in_two_processes(data, tmp_path):
    """``mmlwf train --num-processes 2`` end to end (a tiny PhysNet, one epoch): process 0's files,
    a checkpoint that reads back in this process."""
    from mmlwf.training import load_params, read_history

    model = {"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4, "num_residual": 0,
             "cutoff": CUTOFF}
    cmd = [sys.executable, "-m", "mmlwf.cli", "train", "--data", str(data / "packed"), "--split",
           str(data / "split.npz"), "--stats", str(data / "stats.json"), "-o", str(tmp_path / "run"),
           "--num-processes", "2", "--set", "training.max_epochs=1", "--set", "training.batch_size=8"]
    for k, v in model.items():
        cmd += ["--set", f"model.{k}={v}"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "completed: 1 epochs" in proc.stdout
    hist = read_history(tmp_path / "run" / "history.csv")
    assert len(hist) == 1 and np.isfinite(hist[0]["valid_loss"])
    assert "in 2 processes" in (tmp_path / "run" / "train.log").read_text()
    params, info = load_params(tmp_path / "run", "best")
    assert info["model"]["type"] == "physnet" and jax.tree.leaves(params)


def test_cli_rejects_bad_process_counts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmlwf.cli", "train", "--data", str(tmp_path), "--split", "x.npz",
                           "-o", str(tmp_path / "run"), "--num-processes", "0"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--num-processes" in proc.stderr


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
