"""The span of a decaying learning-rate schedule: fixed at the start (from max_epochs, or from
a time budget measured over whole epochs), kept in the checkpoints, followed exactly on resume.

Time is a fake clock advanced by one second per train step (validation and checkpoints take
none), so the measured epoch time and the decided span are the same in every run. This file
doubles as the script of the killed run (``python -m tests.test_schedule``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.training import checkpoint_meta, read_history
from mmlwf.training.config import training_config
from mmlwf.training.optim import schedule_fn
from mmlwf.training.schedule import MEASURE_FRACTION, SAFETY, Schedule, new_record
from tests.test_training import (  # noqa: F401  (data: a fixture)
    REPO,
    assert_same_history,
    assert_same_latest_params,
    data,
    run_training,
)

FLOOR = 1.0e-6  # min_learning_rate's default
#: a one-minute budget: at one fake second per step the run fits far fewer than max_epochs
BUDGET = ["training.max_time_min=1", "training.max_epochs=40"]


class FakeClock:
    """Seconds that advance by one per train step (``tick`` is the run's ``on_step``)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def tick(self, epoch: int, batch: int) -> None:
        self.t += 1.0


def budget_run(run_dir, data_dir: Path, overrides=(), kill_at: tuple[int, int] | None = None) -> dict:
    clock = FakeClock()

    def on_step(epoch, batch):
        clock.tick(epoch, batch)
        if (epoch, batch) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return run_training(run_dir, data_dir, [*BUDGET, *overrides], on_step=on_step, clock=clock)


def main(argv) -> int:
    """Subprocess entry: ``RUN_DIR DATA_DIR EPOCH,BATCH``: a budget run SIGKILLed after that batch."""
    kill_at = tuple(int(x) for x in argv[2].split(","))
    summary = budget_run(argv[0], Path(argv[1]), kill_at=kill_at)
    print(json.dumps(summary))
    return summary["exit_code"]


# ----------------------------------------------------------------------------- the span


def test_span_from_max_epochs_or_decay_steps_and_the_floor_at_its_end():
    base = {"learning_rate": 1.0, "min_learning_rate": 0.1, "warmup_steps": 4, "max_epochs": 5}
    cos = training_config({**base, "schedule": "warmup_cosine"})
    assert new_record(cos, 10) == {"schedule": "warmup_cosine", "source": "max_epochs", "start": 4, "end": 50}
    assert new_record(training_config({**base, "schedule": "warmup_linear", "decay_steps": 12}), 10) == {
        "schedule": "warmup_linear", "source": "decay_steps", "start": 4, "end": 12}
    timed = training_config({**base, "schedule": "warmup_cosine", "max_time_min": 5})
    assert new_record(timed, 10) == {"schedule": "warmup_cosine", "source": "budget", "start": 4, "end": 50,
                                     "budget": None}
    assert new_record(timed, 10, budget=False)["source"] == "max_epochs"  # a run written before records
    assert new_record(training_config({**base, "schedule": "constant", "max_time_min": 5}), 10) is None
    # a warm-up longer than a tenth of the run is shortened to it; records of runs before the cap kept theirs
    short = training_config({**base, "schedule": "warmup_cosine", "warmup_steps": 300})
    assert new_record(short, 10)["start"] == 5 and new_record(short, 10, budget=False)["start"] == 300
    tiny = schedule_fn(training_config({**base, "schedule": "constant", "warmup_steps": 300, "max_epochs": 2}), 4)
    assert float(tiny(0)) == 1.0  # 8 updates: no warm-up at all
    lin = schedule_fn(training_config({**base, "schedule": "warmup_linear"}), 10, span=(4, 24))
    assert float(lin(0)) == pytest.approx(0.25) and float(lin(4)) == pytest.approx(1.0)
    assert float(lin(14)) == pytest.approx(0.55) and float(lin(24)) == pytest.approx(0.1) == float(lin(99))
    lower = schedule_fn(training_config({**base, "schedule": "warmup_cosine"}), 10, span=(10, 20), peak=0.5)
    assert float(lower(10)) == pytest.approx(0.5) and float(lower(15)) == pytest.approx(0.3)
    assert float(lower(20)) == pytest.approx(0.1)


def test_budget_span_decided_once_from_whole_epochs():
    cfg = training_config({"schedule": "warmup_linear", "learning_rate": 1.0, "min_learning_rate": 0.1,
                           "warmup_steps": 5, "max_epochs": 100, "max_time_min": 1.0, "accumulate": 2})
    sched = Schedule(cfg, updates_per_epoch=5, steps_per_epoch=10, stored=None)
    assert sched.span() == (5, 500) and sched.end_epoch() == 100
    assert sched.factor(9, 1.0) == 1.0 and sched.lr(9) == pytest.approx(1 - 0.9 * 4 / 495)  # the max_epochs run
    assert sched.epoch_end(1, 10, 8.0, 60.0) is None  # the first epoch (compiles): the mark
    assert 5.0 >= MEASURE_FRACTION * 60  # one measured epoch of 5 s is enough
    line = sched.epoch_end(2, 20, 13.0, 60.0)
    fit = int(47.0 * SAFETY // 5.0)  # 9 more epochs fit in 97 % of the 47 s left
    peak = 1 - 0.9 * 5 / 495  # the max_epochs run's rate at update 10
    assert sched.record["budget"] == {"start": 10, "end": 10 + fit * 5, "peak": pytest.approx(peak),
                                      "end_epoch": 2 + fit, "decided_after_epoch": 2, "budget_min": 1.0,
                                      "epoch_s": 5.0, "updates_per_s": 1.0}
    assert sched.span() == (5, 500)  # the optimiser's, unchanged
    assert "warmup_linear over 55 updates" in line and "1-minute budget at 1 updates/s" in line
    assert sched.end_epoch() == 11
    assert sched.lr(10) == pytest.approx(peak) and sched.lr(55) == pytest.approx(0.1)
    mid = 0.1 + (peak - 0.1) * (1 - 20 / 45)  # update 30
    assert sched.lr(30) == pytest.approx(mid)
    # the step's factor times the optimiser's rate is the budget's rate (step 60 = update 30)
    assert float(sched.factor(60, 1.0)) * float(sched._base(30)) == pytest.approx(mid, rel=1e-6)
    assert sched.epoch_end(3, 30, 18.0, 60.0) is None and sched.record["budget"]["end"] == 55  # decided once
    # a resumed run reads the record and never measures again, whatever its budget
    again = Schedule(cfg.model_copy(update={"max_time_min": 0.5}), 5, 10, stored={"schedule": sched.record})
    assert again.record == sched.record and again.epoch_end(4, 40, 1.0, 30.0) is None
    assert again.lr(30) == sched.lr(30) and again.factor(60, 1.0) == sched.factor(60, 1.0)
    # validating every 2nd epoch: measured over whole pairs of epochs
    pairs = Schedule(cfg.model_copy(update={"valid_every": 2}), 5, 10, stored=None)
    assert [pairs.epoch_end(e, 10 * e, 5.0 * e, 60.0) for e in (1, 2)] == [None, None]
    assert pairs.epoch_end(3, 30, 15.0, 60.0) is not None and pairs.record["budget"]["decided_after_epoch"] == 3
    # an epoch that compiled (a batch shape first met in epoch 2: 12 s instead of 5) is not measured
    shapes = Schedule(cfg, 5, 10, stored=None)
    assert shapes.epoch_end(1, 10, 8.0, 60.0, compilations=70) is None  # the mark
    assert shapes.epoch_end(2, 20, 20.0, 60.0, compilations=71) is None  # compiled: the mark again
    assert shapes.epoch_end(3, 30, 25.0, 60.0, compilations=71) is not None
    assert (shapes.record["budget"]["epoch_s"], shapes.record["budget"]["decided_after_epoch"]) == (5.0, 3)
    assert shapes.record["budget"]["end_epoch"] == 3 + int(35.0 * SAFETY // 5.0) == 9
    assert shapes.epoch_end(4, 40, 30.0, 60.0, compilations=71) is None  # no new shape: the plan holds
    rate = shapes.lr(25)  # update 25 = step 50, where the plan is shortened
    line = shapes.epoch_end(5, 50, 45.0, 60.0, compilations=72)  # compiled: 10 s lost, epochs 6-9 no longer fit
    assert "shortened after epoch 5" in line
    b = shapes.record["budget"]
    assert (b["start"], b["end"], b["end_epoch"]) == (25, 25 + 2 * 5, 5 + int(15.0 * SAFETY // 5.0))
    assert b["peak"] == pytest.approx(rate) and shapes.lr(25) == pytest.approx(rate) and rate < 1.0  # no jump
    assert shapes.lr(35) == pytest.approx(0.1) and shapes.end_epoch() == 7
    assert shapes.epoch_end(6, 60, 52.0, 60.0, compilations=72) is None  # 7 s, but epoch 7 still fits
    # epochs slower than measured (5 s, then 7 s): fewer fit, the decay ends sooner; faster: more
    slow, fast, noisy, late = (Schedule(cfg, 5, 10, stored=None) for _ in range(4))
    for sched in (slow, fast, noisy, late):
        sched.epoch_end(1, 10, 8.0, 60.0)
        assert sched.epoch_end(2, 20, 13.0, 60.0) is not None and sched.end_epoch() == 11
    line = slow.epoch_end(3, 30, 20.0, 60.0)  # 6 s per epoch over epochs 2-3: 6 more fit in 97 % of 40 s
    b = slow.record["budget"]
    assert "shortened after epoch 3, epochs take 6 s" in line and slow.end_epoch() == 9
    assert (b["start"], b["end"], b["replanned_epoch_s"]) == (15, 45, 6.0) and slow.lr(45) == pytest.approx(0.1)
    assert "lengthened after epoch 3" in fast.epoch_end(3, 30, 16.0, 60.0) and fast.end_epoch() == 13  # 4 s
    assert noisy.epoch_end(3, 30, 17.5, 60.0) is None and noisy.end_epoch() == 11  # 4.75 s: 8 fit, as planned
    # 5.15 s: the 8 epochs planned still fit the 41.7 s left, not 97 % of it: the plan holds
    assert late.epoch_end(3, 30, 18.3, 60.0) is None and late.end_epoch() == 11
    resumed = Schedule(cfg, 5, 10, stored={"schedule": shapes.record})
    assert resumed.epoch_end(8, 80, 1.0, 60.0, compilations=90) is None and resumed.lr(30) == shapes.lr(30)
    # the checkpoint written after the first epoch is not measured: the measurement starts after it
    written = Schedule(cfg, 5, 10, stored=None)
    assert written.epoch_end(1, 10, 8.0, 60.0) is None
    written.saved(11.0)  # 3 s writing 'latest'
    assert written.epoch_end(2, 20, 16.0, 60.0) is not None and written.record["budget"]["epoch_s"] == 5.0
    written.saved(17.0)  # after deciding: nothing changes
    assert written.record["budget"]["epoch_s"] == 5.0 and written.marks == [(2, 16.0)]  # later epochs from here
    # stopped before deciding and resumed without a budget: the max_epochs run it was, exactly
    undecided = new_record(cfg, 5)
    late = Schedule(cfg.model_copy(update={"max_time_min": None}), 5, 10, stored={"schedule": undecided})
    assert "over 500 updates (max_epochs): no time budget" in late.describe()
    assert "no time budget" in late.epoch_end(3, 30, 0.0, None)
    assert late.record == {"schedule": "warmup_linear", "source": "max_epochs", "start": 5, "end": 500}
    assert late.factor(60, 1.0) == 1.0 and late.end_epoch() == 100


def test_a_host_factor_scales_the_optimiser_update_exactly_as_a_rate():
    import jax
    import jax.numpy as jnp

    from mmlwf.training.optim import make_optimizer

    cfg = training_config({"schedule": "warmup_cosine", "optimizer": "adamw", "weight_decay": 1e-3,
                           "clip_norm": 1.0, "learning_rate": 0.1, "warmup_steps": 2})
    unit = training_config({**cfg.model_dump(), "schedule": "constant", "learning_rate": 1.0, "warmup_steps": 0})
    tx, tx_unit = make_optimizer(cfg, 10, span=(2, 40)), make_optimizer(unit, 10)
    lr = schedule_fn(cfg, 10, span=(2, 40))
    params = {"w": jnp.arange(4.0), "b": jnp.ones(())}
    sa, sb = tx.init(params), tx_unit.init(params)
    for count in range(12):
        grads = jax.tree.map(lambda p: jnp.sin(p + count), params)
        ua, sa = tx.update(grads, sa, params)
        ub, sb = tx_unit.update(grads, sb, params)
        for a, b in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):  # the update is the rate times a direction
            np.testing.assert_allclose(np.asarray(a), np.asarray(b) * np.float32(lr(count)), rtol=1e-6)


# ----------------------------------------------------------------------------- runs


def test_span_from_max_epochs_is_stored_and_kept_when_resumed_with_more_epochs(data, tmp_path):
    first = run_training(tmp_path, data, ["training.max_epochs=2"])
    rec = checkpoint_meta(tmp_path, "latest")["schedule"]
    steps = first["steps"]
    assert rec == {"schedule": "warmup_cosine", "source": "max_epochs", "start": min(3, steps // 10), "end": steps} == first["schedule"]
    assert "schedule: warmup_cosine over" in (tmp_path / "train.log").read_text()
    more = run_training(tmp_path, data, ["training.max_epochs=3"])
    assert more["status"] == "completed" and more["epochs"] == 3 and more["schedule"] == rec
    assert checkpoint_meta(tmp_path, "latest")["schedule"] == rec
    rows = read_history(tmp_path / "history.csv")
    assert rows[1]["learning_rate"] > FLOOR and rows[2]["learning_rate"] == pytest.approx(FLOOR)


@pytest.fixture(scope="module")
def budget_reference(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    return run_dir, budget_run(run_dir, data)


def test_budget_run_ends_with_the_decay_at_the_floor(budget_reference):
    run_dir, summary = budget_reference
    rec = summary["schedule"]
    b = rec["budget"]
    steps_per_epoch = read_history(run_dir / "history.csv")[0]["step"]
    # one second per step: the epochs after the first are measured at steps_per_epoch s each
    assert rec["source"] == "budget" and b["decided_after_epoch"] == 2 and b["epoch_s"] == steps_per_epoch
    assert (rec["start"], rec["end"]) == (3, 40 * steps_per_epoch)  # the optimiser's: max_epochs
    fit = int((60 - 2 * steps_per_epoch) * SAFETY // b["epoch_s"])
    assert b["end_epoch"] == 2 + fit < 40 and b["end"] == b["end_epoch"] * steps_per_epoch
    assert summary["status"] == "completed" and summary["epochs"] == b["end_epoch"]
    assert summary["steps"] == b["end"] and summary["wall_time_s"] <= 60  # ended within the budget
    assert checkpoint_meta(run_dir, "latest")["schedule"] == rec
    rows = read_history(run_dir / "history.csv")
    lrs = [r["learning_rate"] for r in rows]
    assert all(a > c for a, c in zip(lrs, lrs[1:])) and 1.0e-2 > lrs[1] > 0.99e-2  # max_epochs' until decided
    assert FLOOR < lrs[-1] < 1.0e-2 * 0.02  # the last update's rate: next to the floor
    assert rows[-1]["valid_loss"] is not None  # the last epoch is validated
    log = (run_dir / "train.log").read_text()
    assert (f"schedule: warmup_cosine over {b['end']} updates (decay from update {b['start']}" in log
            and "from the 1-minute budget at" in log and f"the run ends after epoch {b['end_epoch']}" in log)


def test_killed_budget_run_resumes_to_the_uninterrupted_run(budget_reference, data, tmp_path):
    ref_dir, ref = budget_reference
    run_dir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(data / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.run([sys.executable, "-m", "tests.test_schedule", str(run_dir), str(data), "3,2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]  # in epoch 4, after the span was fixed
    meta = checkpoint_meta(run_dir, "latest")
    # written after epoch 2, where the span was fixed; none after it within checkpoint_interval_min
    assert (meta["epoch"], meta["batch"]) == (2, 0) and meta["schedule"] == ref["schedule"]
    summary = budget_run(run_dir, data, ["training.max_time_min=0.9"])  # another budget: the same span
    assert summary["status"] == "completed" and summary["steps"] == ref["steps"]
    assert summary["schedule"] == ref["schedule"] == checkpoint_meta(run_dir, "latest")["schedule"]
    assert "resumed from checkpoint" in (run_dir / "train.log").read_text()
    assert_same_history(ref_dir, run_dir)  # learning rates included
    assert_same_latest_params(ref_dir, run_dir)  # bitwise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
