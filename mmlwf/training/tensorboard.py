"""TensorBoard event files of a training run (``training.tensorboard``, on by default).

Every ``history.csv`` row is also written, when its epoch ends, as scalars at step = epoch to
``<run>/tensorboard`` (:attr:`mmlwf.rundir.RunDir.tensorboard`), through tensorboardX (no
TensorFlow needed), so a long run is watched as it goes: ``tensorboard --logdir results/runs``.
Tags group the columns: ``loss/train``, ``loss/valid``, ``train/forces_mae_eV_per_A``,
``valid/...``, ``ensemble/valid_loss_m0``, ``optim/learning_rate``, ``optim/grad_norm``,
``cost/train_structures_per_s``, ... (units as in the column names). A resumed run purges
the events of the epochs after its checkpoint (they are written again), so each epoch
appears once, as in ``history.csv``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from ..fileio import writing
from .history import COST_COLUMNS

#: history columns that are not scalars of an epoch
_NOT_SCALARS = ("epoch", "step")


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a ``history.csv`` column."""
    if column in ("train_loss", "valid_loss"):
        return f"loss/{column.split('_')[0]}"
    if column == "learning_rate":
        return "optim/learning_rate"
    if column == "train_grad_norm":
        return "optim/grad_norm"
    if column.startswith("valid_loss_m"):
        return f"ensemble/{column}"
    if column in COST_COLUMNS or column == "wall_time_s":
        return f"cost/{column}"
    for part in ("train", "valid"):
        if column.startswith(f"{part}_"):
            return f"{part}/{column[len(part) + 1:]}"
    return column


class EpochBoard:
    """Writes history rows to TensorBoard event files under ``logdir``; the events of epochs
    after ``epochs_done`` left by an interrupted run are purged when the first row comes."""

    def __init__(self, logdir: str | os.PathLike, epochs_done: int) -> None:
        self.logdir, self.epochs_done = os.fspath(logdir), int(epochs_done)
        self._writer = None

    def add(self, row: Mapping) -> None:
        """The row's numeric columns at step ``row["epoch"]``, flushed."""
        epoch = int(row["epoch"])
        with writing(self.logdir):
            if self._writer is None:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(self.logdir, purge_step=self.epochs_done + 1)
            for column, value in row.items():
                if column in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    self._writer.add_scalar(scalar_tag(column), value, global_step=epoch)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
