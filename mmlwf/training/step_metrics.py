"""A train step's metrics on their way from the device to the epoch sums.

The loop fetches a step's metrics one step late, while the next step runs
(:class:`PendingStep`, :func:`take_step`): a non-finite loss or gradient stops the run with
:class:`~mmlwf.errors.TrainingDiverged` naming the epoch, the step and the structures of its
batches (the step itself kept the state as it was, :mod:`.state`); otherwise the metrics are
added to the epoch's :class:`~.loop_state.EpochSums`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TrainingDiverged
from .loop_state import EpochSums


@dataclass
class PendingStep:
    """A step whose metrics are still on the device: its epoch (from 0), the loader batches
    done of the epoch after it, the global step count after it, the ``(index, dataset)`` of
    its batches and its metrics (:func:`~.state.make_train_step`)."""

    epoch: int
    batch_no: int
    step: int
    members: list[tuple[np.ndarray, int]]
    metrics: dict


def take_step(pending: PendingStep, acc: EpochSums, n_devices: int) -> None:
    """Fetch ``pending``'s metrics; raise on a non-finite loss or gradient; add them to ``acc``."""
    import jax

    host = jax.device_get(pending.metrics)
    if not bool(host["ok"]):
        what = f"loss={float(host['loss'])!r}, gradient norm={float(host['grad_norm'])!r}"
        raise TrainingDiverged(f"non-finite loss or gradient ({what}) at epoch {pending.epoch + 1}, "
                               f"{_where(pending, n_devices)}; no checkpoint written after it, the last good one is kept")
    acc.add_step(host)


def _where(pending: PendingStep, n_devices: int) -> str:
    """The step and the structures of its batches, for the divergence message."""
    held = [([int(i) for i in np.asarray(index) if i >= 0], int(dataset)) for index, dataset in pending.members]
    batch_no, step = pending.batch_no, pending.step
    if len(held) == 1:
        idx, dataset = held[0]
        return (f"step {batch_no} of the epoch (global step {step}); the batch holds structures {idx} "
                f"of dataset {dataset}")
    return (f"batches {batch_no - len(held) + 1}-{batch_no} of the epoch (global step {step}, "
            f"{n_devices} devices); the batches hold structures "
            + ", ".join(f"{idx} of dataset {dataset}" for idx, dataset in held))
