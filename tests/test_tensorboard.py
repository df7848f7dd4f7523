"""TensorBoard event files of a training (``training.tensorboard``): every history.csv row as
scalars at step = epoch, each epoch once across a resume, none when switched off."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mmlwf.rundir import RunDir
from mmlwf.training import read_history
from mmlwf.training.tensorboard import scalar_tag

from .test_training import make_data, run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("tensorboard_data"))


def read_scalars(logdir: Path) -> dict[str, dict[int, list[float]]]:
    """``{tag: {step: [values]}}`` of every event file under ``logdir`` (TFRecord framing:
    length, its CRC, the Event proto, its CRC), honouring the purge of a restarted writer."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = event_pb2.Event.FromString(data[at + 12: at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for steps in out.values():  # a restarted writer drops the steps it writes again
                    for step in [s for s in steps if s >= event.step]:
                        del steps[step]
            for value in event.summary.value:
                out[value.tag][event.step].append(value.simple_value)
    return out


def test_history_rows_become_scalars_once_per_epoch_across_a_resume(data, tmp_path):
    run = tmp_path / "run"
    run_training(run, data, ("training.max_epochs=2",))
    run_training(run, data, ("training.max_epochs=4",))  # resumed
    history = read_history(RunDir(run).history_csv)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    scalars = read_scalars(RunDir(run).tensorboard)
    assert {"loss/train", "loss/valid", "optim/learning_rate", "optim/grad_norm", "train/forces_mae_eV_per_A",
            "valid/energy_rmse_eV", "cost/train_structures_per_s"} <= set(scalars)
    for column in ("train_loss", "valid_loss", "train_grad_norm", "learning_rate", "valid_forces_mae_eV_per_A"):
        steps = scalars[scalar_tag(column)]
        assert sorted(steps) == [1, 2, 3, 4] and all(len(v) == 1 for v in steps.values()), column
        np.testing.assert_allclose([steps[r["epoch"]][0] for r in history], [r[column] for r in history], rtol=1e-6)
    assert all(r["train_grad_norm"] > 0 for r in history)


def test_switched_off_writes_no_events(data, tmp_path):
    run = tmp_path / "run"
    run_training(run, data, ("training.max_epochs=1", "training.tensorboard=false"))
    assert not RunDir(run).tensorboard.exists()
    assert read_history(RunDir(run).history_csv)[0]["train_grad_norm"] > 0


def test_tags_group_the_columns():
    assert scalar_tag("valid_loss_m1") == "ensemble/valid_loss_m1"
    assert scalar_tag("valid_dipole_mae_eA") == "valid/dipole_mae_eA"
    assert scalar_tag("padding_efficiency") == "cost/padding_efficiency"
    assert scalar_tag("wall_time_s") == "cost/wall_time_s"
