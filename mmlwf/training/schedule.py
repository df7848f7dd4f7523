"""The length of a decaying learning-rate schedule, fixed once per run and kept in its checkpoints.

A decaying schedule (``warmup_cosine``, ``warmup_linear``: :data:`~.optim.DECAYING`) goes
from the peak to ``min_learning_rate`` over a span of optimiser updates. The span is decided
once and saved in the ``schedule`` entry of every ``latest`` checkpoint (the loop state's
``schedule`` record), so a resumed run follows the same schedule whatever ``max_epochs`` or
``max_time_min`` it is given (both may change on resume):

- ``decay_steps`` set: from the end of the warm-up to ``decay_steps`` (source ``decay_steps``);
- else without ``max_time_min``: to the last update of ``max_epochs`` (source ``max_epochs``);
- else (source ``budget``): sized to the time budget of the invocation that starts the run.
  After the warm-up the rate holds at the peak while the wall time of whole epochs
  (training, validation, checkpoint) is measured, from the end of the invocation's first
  epoch (which compiles) over whole cycles of ``valid_every`` and ``checkpoint_every``
  epochs, at least one and :data:`MEASURE_FRACTION` of the budget (or of ``max_epochs``). Then the run's last epoch is fixed: as many more epochs as
  fit :data:`SAFETY` of the time left, at most ``max_epochs``; the decay runs from that
  update to the last update of that epoch, and the run completes there (validated, best
  checkpoint) instead of being cut by the time limit. The rate is then computed on the host
  each step (:meth:`Schedule.factor`) and passed to the jitted step as its ``lr_factor``
  (no recompilation). A run stopped before the decision measures again when resumed.

Records written before this module existed have no ``schedule``: such a run keeps the span
of its config (``max_epochs``), as it did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import TrainingConfig
from .optim import DECAYING, Span, default_span, schedule_fn

#: fraction of the time budget (or of max_epochs) measured before the budget's span is decided
MEASURE_FRACTION = 0.02
#: fraction of the time left that the decided epochs may take (the rest absorbs jitter)
SAFETY = 0.97


def new_record(cfg: TrainingConfig, updates_per_epoch: int, budget: bool = True) -> dict | None:
    """The ``schedule`` record of a run that starts now (None: the schedule does not decay).
    ``budget``: a ``max_time_min`` may size it (False for a run written before records)."""
    if cfg.schedule not in DECAYING:
        return None
    if budget and cfg.decay_steps is None and cfg.max_time_min is not None:
        return {"schedule": cfg.schedule, "source": "budget", "start": None, "end": None}
    start, end = default_span(cfg, updates_per_epoch)
    return {"schedule": cfg.schedule, "source": "max_epochs" if cfg.decay_steps is None else "decay_steps",
            "start": start, "end": end}


class Schedule:
    """The learning rate of a run: its config, its ``record`` (see the module docstring;
    updated in place when a budget's span is decided) and the host side of the rate."""

    def __init__(self, cfg: TrainingConfig, updates_per_epoch: int, steps_per_epoch: int,
                 stored: Mapping[str, Any] | None) -> None:
        """``stored``: the meta of the checkpoint the run resumes (None: a new run)."""
        self.cfg = cfg
        self.updates_per_epoch = updates_per_epoch
        self.steps_per_epoch = steps_per_epoch
        if stored is None:
            self.record = new_record(cfg, updates_per_epoch)
        elif stored.get("schedule") is not None:
            self.record = dict(stored["schedule"])
        else:
            self.record = new_record(cfg, updates_per_epoch, budget=False)
        self.marks: list[tuple[int, float]] = []  # (epochs done, clock) at epoch ends measured
        self._lr = schedule_fn(cfg, updates_per_epoch, np, self.span())

    @property
    def on_host(self) -> bool:
        """Whether the rate is passed to the step (a budget's span) rather than inside optax."""
        return self.record is not None and self.record["source"] == "budget"

    def span(self) -> Span | None:
        return None if self.record is None else (self.record["start"] or 0, self.record["end"])

    def lr(self, updates: int) -> float:
        """The rate of the update after ``updates`` updates, without the plateau factor."""
        return float(self._lr(updates))

    def factor(self, step: int, plateau: float) -> np.float32:
        """The ``lr_factor`` of the step after ``step`` steps."""
        if not self.on_host:
            return np.float32(plateau)
        return np.float32(self._lr(step // self.cfg.accumulate)) * np.float32(plateau)

    def end_epoch(self) -> int:
        """The epochs the run trains: ``max_epochs``, or fewer where a budget decided so."""
        end = (self.record or {}).get("end_epoch")
        return self.cfg.max_epochs if end is None else min(self.cfg.max_epochs, int(end))

    def describe(self) -> str:
        """The schedule and its fixed length, for train.log."""
        r, cfg = self.record, self.cfg
        if r is None:
            return f"schedule: {cfg.schedule}"
        if r["end"] is None and cfg.max_time_min is None:
            return (f"schedule: {r['schedule']}, its length to be fixed at the end of this epoch: to max_epochs "
                    "(no time budget in this invocation)")
        if r["end"] is None:
            return (f"schedule: {r['schedule']}, its length to be fixed from the {cfg.max_time_min:g}-minute "
                    f"budget after measuring whole epochs (the rate holds at the peak until then)")
        text = (f"schedule: {r['schedule']} over {r['end']} updates (decay from update {r['start']} to "
                f"{r['end']}, floor {cfg.min_learning_rate:g}")
        if r["source"] != "budget":
            return text + f"; from {r['source']})"
        if r.get("epoch_s") is None:
            return text + f"; to max_epochs: no time budget when it was fixed; the run ends after epoch {r['end_epoch']})"
        return text + (f" from the {r['budget_min']:g}-minute budget at {r['updates_per_s']:.4g} updates/s "
                       f"({r['epoch_s']:.4g} s per epoch, validation and checkpoint included); "
                       f"the run ends after epoch {r['end_epoch']})")

    def epoch_end(self, epoch: int, step: int, now: float, deadline: float | None) -> str | None:
        """Note the end of epoch ``epoch`` (epochs done; ``step``: steps done; ``now``: the
        clock; ``deadline``: when the invocation's time is up) and decide a budget's span when
        measured enough: then the record is complete and the :meth:`describe` line returned."""
        r, cfg = self.record, self.cfg
        if not self.on_host or r["end"] is not None:
            return None
        self.marks.append((epoch, now))
        e0, t0 = self.marks[0]
        measured = epoch - e0
        cycle = math.lcm(cfg.valid_every, cfg.checkpoint_every)  # epochs with and without them alike
        if deadline is None:  # resumed without a time budget before deciding: max_epochs
            end_epoch, epoch_s = cfg.max_epochs, None
        elif measured < 1 or measured % cycle or (now - t0 < MEASURE_FRACTION * 60.0 * cfg.max_time_min
                                                  and measured < MEASURE_FRACTION * cfg.max_epochs):
            return None
        else:
            epoch_s = (now - t0) / measured
            fit = math.floor(max(deadline - now, 0.0) * SAFETY / epoch_s) if epoch_s > 0 else cfg.max_epochs
            end_epoch = min(cfg.max_epochs, epoch + max(fit, 1))
        start = max(step // cfg.accumulate, cfg.warmup_steps)
        end = max((step + max(end_epoch - epoch, 0) * self.steps_per_epoch) // cfg.accumulate, start + 1)
        r.update(start=start, end=end, end_epoch=end_epoch, decided_after_epoch=epoch,
                 budget_min=cfg.max_time_min, epoch_s=epoch_s,
                 updates_per_s=None if not epoch_s else self.updates_per_epoch / epoch_s)
        self._lr = schedule_fn(cfg, self.updates_per_epoch, np, self.span())
        return self.describe()
