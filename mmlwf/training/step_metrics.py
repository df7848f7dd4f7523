"""A train step's metrics on their way from the device to the epoch sums.

The train step packs its metrics into one array (:class:`StepMetrics`, :func:`pack_metrics`),
so that the host fetches them in one transfer. The loop fetches a step's metrics one step
late, while the next step runs (:class:`PendingStep`, :func:`take_step`): a non-finite loss
or gradient stops the run with :class:`~mmlwf.errors.TrainingDiverged` naming the epoch, the
step and the structures of its batches (the step itself kept the state as it was,
:mod:`.state`); otherwise the metrics are added to the epoch's :class:`~.loop_state.EpochSums`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TrainingDiverged
from .loop_state import EpochSums


class StepMetrics:
    """A step's scalar metrics as one array (a pytree: ``values`` its only leaf, ``names`` static).

    ``values`` holds them in ``names`` order in one dtype (the widest float among them; the
    flag ``ok`` as 1/0), so :meth:`to_host` gives each value exactly as it was."""

    def __init__(self, names: tuple[str, ...], values: Any) -> None:
        self.names = names
        self.values = values

    def to_host(self) -> dict[str, np.ndarray]:
        """``{name: value}`` on the host (one transfer)."""
        return dict(zip(self.names, np.asarray(self.values)))


_registered = False


def _register() -> None:
    """Make :class:`StepMetrics` a pytree (once; jax is imported only when it is needed)."""
    global _registered
    if not _registered:
        import jax

        jax.tree_util.register_pytree_node(StepMetrics, lambda m: ((m.values,), m.names),
                                           lambda names, leaves: StepMetrics(names, leaves[0]))
        _registered = True


def pack_metrics(metrics: Mapping[str, Any]) -> StepMetrics:
    """``metrics`` (scalars, traced) as one :class:`StepMetrics`, names sorted as jax orders a
    dict's keys."""
    import jax.numpy as jnp

    _register()
    names = tuple(sorted(metrics))
    arrays = [jnp.asarray(metrics[k]) for k in names]
    dtype = jnp.result_type(*[a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)])
    return StepMetrics(names, jnp.stack([a.astype(dtype) for a in arrays]))


@dataclass
class PendingStep:
    """A step whose metrics are still on the device: its epoch (from 0), the loader batches
    done of the epoch after it, the global step count after it, the ``(index, dataset)`` of
    its batches and its metrics (:func:`~.state.make_train_step`)."""

    epoch: int
    batch_no: int
    step: int
    members: list[tuple[np.ndarray, int]]
    metrics: StepMetrics


def take_step(pending: PendingStep, acc: EpochSums, n_devices: int) -> None:
    """Fetch ``pending``'s metrics; raise on a non-finite loss or gradient; add them to ``acc``."""
    host = pending.metrics.to_host()
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
