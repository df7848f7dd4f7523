"""The training loop's host state, as saved in the ``meta`` item of every ``latest`` checkpoint.

:class:`LoopState` holds what a resumed run needs besides the arrays of the train state:
the counters (epochs, the batches done of the epoch in progress, steps), the sums of the
epoch in progress (:class:`EpochSums`), the best loss and its epoch (early stopping counts
epochs since it), the reduce-on-plateau state (learning-rate factor, patience count;
:class:`~.optim.Plateau`), the RNG key, the history rows, the resolved config and the
span of a decaying learning-rate schedule (``schedule``, :mod:`.schedule`; absent when the
schedule does not decay and in checkpoints written before it existed).

The checkpoint keeps it as a JSON object (:meth:`LoopState.to_meta`,
:meth:`LoopState.from_meta`); its keys and their meaning are those of ``meta_version`` 1,
so checkpoints written before this class existed resume, and checkpoints written now read
back as the plain dict they always were (:func:`~.checkpoint.checkpoint_meta`). Keys it does
not know are kept as they were.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .optim import Plateau

#: the version of the meta format (its keys are the fields of :class:`LoopState`)
META_VERSION = 1

#: the metric sums in a step's output that are not error sums
_NOT_SUMS = ("loss", "ok")


def json_ready(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (numpy scalars to Python numbers, tuples to lists)."""
    return json.loads(json.dumps(obj))


@dataclass
class EpochSums:
    """Sums over the steps done of the epoch in progress (kept in checkpoints, so that an
    epoch resumed midway reports all its steps).

    ``loss_sum``/``n``: the steps' losses and their number; ``sums``: the error sums of
    :func:`~.losses.batch_sums` (float64 on the host) and ``grad_norm``, the steps' gradient
    norms (before clipping; an ensemble's: the members' mean); ``structures``/``atoms``/``slots``:
    real structures, real atoms and padded atom slots of the training batches; ``train_s``:
    seconds of the epoch's training loop (see :mod:`.history`).
    """

    loss_sum: float = 0.0
    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    structures: int = 0
    atoms: int = 0
    slots: int = 0
    train_s: float = 0.0

    def add_step(self, host: Mapping[str, Any]) -> None:
        """Add the host copy of a train step's metrics (``loss`` and the error sums)."""
        self.loss_sum += float(host["loss"])
        self.n += 1
        for k, v in host.items():
            if k not in _NOT_SUMS:
                self.sums[k] = self.sums.get(k, 0.0) + float(np.float64(v))

    def mean_loss(self) -> float | None:
        return self.loss_sum / self.n if self.n else None

    def means(self) -> dict[str, float]:
        """The epoch's ``train_loss`` and ``train_grad_norm``: means over its steps."""
        grad = self.sums.get("grad_norm") if self.grad_norms_complete else None
        n = max(self.n, 1)
        return {"train_loss": self.loss_sum / n, "train_grad_norm": None if grad is None else grad / n}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    #: False for an epoch resumed from a checkpoint written before the gradient norms were summed
    #: (its mean gradient norm is then unknown); not a field: not written to checkpoints
    grad_norms_complete = True

    @classmethod
    def from_dict(cls, d: Mapping | None) -> EpochSums:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.grad_norms_complete = out.n == 0 or "grad_norm" in out.sums
        return out


@dataclass
class LoopState:
    """The host state of a training run (see the module docstring).

    ``epoch``: epochs completed (= the loader epoch in progress); ``batch``: loader batches
    done of the epoch in progress (its plan position); ``step``: train steps done in all
    (optimiser updates = ``step // accumulate``; a step is one batch on one device, up to
    ``devices`` batches with data parallelism); ``status``: what the run was when the
    checkpoint was written; ``wall_time_s``: seconds of all invocations up to it;
    ``rng``: the run's PRNG key (uint32 words; carried for models that draw random numbers);
    ``schedule``: the record of :mod:`.schedule` (None: none).
    """

    config: dict
    rng: list[int]
    devices: int = 1
    status: str = "running"
    epoch: int = 0
    batch: int = 0
    step: int = 0
    acc: EpochSums = field(default_factory=EpochSums)
    wall_time_s: float = 0.0
    best_loss: float | None = None
    best_epoch: int | None = None
    plateau: Plateau = field(default_factory=Plateau)
    history: list[dict] = field(default_factory=list)
    schedule: dict | None = None
    meta_version: int = META_VERSION
    extra: dict = field(default_factory=dict)  # keys of a newer format, written back as read

    # -- derived
    def last_valid_loss(self) -> float | None:
        """The latest validation loss of the history (None before the first validation)."""
        return next((r["valid_loss"] for r in reversed(self.history) if r.get("valid_loss") is not None), None)

    def epochs_since_best(self) -> int | None:
        return None if self.best_epoch is None else self.epoch - self.best_epoch

    # -- the checkpoint's JSON meta
    def to_meta(self) -> dict:
        """The JSON object saved as the checkpoint's ``meta`` (meta_version 1 keys and order)."""
        meta = {
            "meta_version": self.meta_version,
            "status": self.status,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "devices": self.devices,
            "acc": self.acc.to_dict(),
            "wall_time_s": self.wall_time_s,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "plateau": self.plateau.to_dict(),
            "rng": list(self.rng),
            "history": self.history,
            "config": self.config,
        }
        if self.schedule is not None:
            meta["schedule"] = self.schedule
        meta.update({k: v for k, v in self.extra.items() if k not in meta})
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LoopState:
        """The state of a checkpoint's ``meta`` (written by :meth:`to_meta` or by the loop's
        dict of earlier versions: the same keys; ``devices`` defaults to 1)."""
        meta = dict(meta)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        best_loss = meta.get("best_loss")
        best_epoch = meta.get("best_epoch")
        return cls(
            config=dict(meta.get("config") or {}),
            rng=[int(w) for w in meta["rng"]],
            devices=int(meta.get("devices", 1)),
            status=str(meta.get("status", "running")),
            epoch=int(meta.get("epoch", 0)),
            batch=int(meta.get("batch", 0)),
            step=int(meta.get("step", 0)),
            acc=EpochSums.from_dict(meta.get("acc")),
            wall_time_s=float(meta.get("wall_time_s", 0.0)),
            best_loss=None if best_loss is None else float(best_loss),
            best_epoch=None if best_epoch is None else int(best_epoch),
            plateau=Plateau.from_dict(meta.get("plateau")),
            history=[dict(r) for r in meta.get("history", [])],
            schedule=None if meta.get("schedule") is None else dict(meta["schedule"]),
            meta_version=int(meta.get("meta_version", META_VERSION)),
            extra={k: v for k, v in meta.items() if k not in known},
        )
