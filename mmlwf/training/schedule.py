"""The span of a decaying learning-rate schedule, fixed once per run and kept in its checkpoints.

A decaying schedule (``warmup_cosine``, ``warmup_linear``: :data:`~.optim.DECAYING`) goes
from the peak to ``min_learning_rate`` over a span of optimiser updates. The span is decided
once and saved in the ``schedule`` entry of every ``latest`` checkpoint (the loop state's
``schedule`` record: ``source``, ``start``, ``end``, and for a budget ``budget``), so a
resumed run follows the same schedule whatever ``max_epochs`` or ``max_time_min`` it is
given (both may change on resume; they change when it stops):

- ``decay_steps`` set: from the end of the warm-up to ``decay_steps`` (source ``decay_steps``);
- else without ``max_time_min``: to the last update of ``max_epochs`` (source ``max_epochs``);
- else (source ``budget``): sized to the time budget of the invocation that starts the run.
  Until it is decided the run is exactly the ``max_epochs`` one (the span the optimiser
  holds), while the wall time of whole epochs (training, validation, checkpoint) is
  measured, from the end of the invocation's first epoch (which compiles; after the
  checkpoint written then, :meth:`Schedule.saved`) over whole cycles
  of ``valid_every`` and ``checkpoint_every`` epochs, at least one and
  :data:`MEASURE_FRACTION` of the budget (or of ``max_epochs``). Then the run's last epoch
  is fixed: as many more epochs as fit :data:`SAFETY` of the time left, at most
  ``max_epochs``; the decay goes from the rate reached to the floor at the last update of
  that epoch, and the run completes there (validated, best checkpoint) rather than being cut
  by the time limit. After every later epoch of that invocation the plan is checked against
  the mean epoch time measured so far (epochs that compiled left out): it is shortened when
  the epochs planned no longer fit the time left, and lengthened when clearly more fit
  (:data:`LENGTHEN_MARGIN`; :meth:`Schedule._replan`). From then on the
  host passes the ratio of that rate to the optimiser's as the jitted step's ``lr_factor``
  (no recompilation). A run stopped before the decision
  measures again when resumed with a budget, and without one stays the ``max_epochs`` run.

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
#: a decided plan is lengthened only when this fraction more of its epochs left (and 2 epochs) fit
LENGTHEN_MARGIN = 0.05


def new_record(cfg: TrainingConfig, updates_per_epoch: int, budget: bool = True) -> dict | None:
    """The ``schedule`` record of a run that starts now (None: the schedule does not decay).
    ``budget``: a ``max_time_min`` may size it, and the warm-up is capped (False for a run
    written before records, which kept ``warmup_steps``)."""
    if cfg.schedule not in DECAYING:
        return None
    start, end = default_span(cfg, updates_per_epoch, capped=budget)
    record = {"schedule": cfg.schedule, "source": "max_epochs" if cfg.decay_steps is None else "decay_steps",
              "start": start, "end": end}
    if budget and cfg.decay_steps is None and cfg.max_time_min is not None:
        record.update(source="budget", budget=None)
    return record


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
        self._compilations: int | None = None  # the XLA compilation count at the first mark
        self._timed: tuple[float, int] | None = None  # seconds and epochs measured, once decided here
        self._base = schedule_fn(cfg, updates_per_epoch, np, self.span())
        self._budget = None
        if self.decided is not None:
            self._budget = self._budget_fn(self.decided)

    def _budget_fn(self, b: Mapping):
        return schedule_fn(self.cfg, self.updates_per_epoch, np, (b["start"], b["end"]), b["peak"],
                           warmup=self.record["start"])

    @property
    def decided(self) -> dict | None:
        """The decided ``budget`` part of the record (None: no budget, or not decided yet)."""
        return (self.record or {}).get("budget")

    def span(self) -> Span | None:
        """The span the optimiser holds (None: the schedule does not decay)."""
        return None if self.record is None else (self.record["start"], self.record["end"])

    def lr(self, updates: int) -> float:
        """The rate of the update after ``updates`` updates, without the plateau factor."""
        return float((self._budget or self._base)(updates))

    def factor(self, step: int, plateau: float) -> np.float32:
        """The ``lr_factor`` of the step after ``step`` steps: the plateau factor, times the
        ratio of a budget's rate to the optimiser's once the budget's span is decided."""
        if self._budget is None:
            return np.float32(plateau)
        count = step // self.cfg.accumulate
        held = float(self._base(count))
        ratio = float(self._budget(count)) / held if held > 0 else 0.0
        return np.float32(ratio) * np.float32(plateau)

    def end_epoch(self) -> int:
        """The epochs the run trains: ``max_epochs``, or fewer where a budget decided so."""
        end = (self.decided or {}).get("end_epoch")
        return self.cfg.max_epochs if end is None else min(self.cfg.max_epochs, int(end))

    def describe(self) -> str:
        """The schedule and its fixed length, for train.log."""
        r, cfg, b = self.record, self.cfg, self.decided
        if r is None:
            return f"schedule: {cfg.schedule}"
        if r["source"] == "budget" and b is None and cfg.max_time_min is None:
            return (f"schedule: {r['schedule']} over {r['end']} updates (max_epochs): no time budget in this "
                    "invocation to size it")
        if r["source"] == "budget" and b is None:
            return (f"schedule: {r['schedule']} over {r['end']} updates (max_epochs) until its length is fixed "
                    f"from the {cfg.max_time_min:g}-minute budget after measuring whole epochs")
        if b is None:
            return (f"schedule: {r['schedule']} over {r['end']} updates (decay from update {r['start']}, floor "
                    f"{cfg.min_learning_rate:g}; from {r['source']})")
        return (f"schedule: {r['schedule']} over {b['end']} updates (decay from update {b['start']} to {b['end']}, "
                f"floor {cfg.min_learning_rate:g}) from the {b['budget_min']:g}-minute budget at "
                f"{b['updates_per_s']:.4g} updates/s ({b['epoch_s']:.4g} s per epoch, validation and checkpoint "
                f"included); the run ends after epoch {b['end_epoch']}")

    def epoch_end(self, epoch: int, step: int, now: float, deadline: float | None,
                  compilations: int | None = None) -> str | None:
        """Note the end of epoch ``epoch`` (epochs done; ``step``: steps done; ``now``: the
        clock; ``deadline``: when the invocation's time is up; ``compilations``: the process's
        XLA compilations so far) and decide a budget's span when measured enough: then the
        record is complete and the :meth:`describe` line returned. An epoch that compiled (a
        batch shape first met after the first epoch) is not measured: the measurement starts
        again at its end."""
        r, cfg = self.record, self.cfg
        if r is None or r["source"] != "budget":
            return None
        if self.decided is not None:
            return self._replan(epoch, step, now, deadline, compilations)
        if deadline is None:  # resumed without a budget before deciding: the max_epochs run it was
            r["source"] = "max_epochs"
            r.pop("budget", None)
            return f"no time budget to size the schedule: {self.describe()}"
        if compilations is not None and compilations != self._compilations:
            self.marks, self._compilations = [], compilations
        self.marks.append((epoch, now))
        e0, t0 = self.marks[0]
        measured = epoch - e0
        cycle = math.lcm(cfg.valid_every, cfg.checkpoint_every)  # epochs with and without them alike
        enough = now - t0 >= MEASURE_FRACTION * 60.0 * cfg.max_time_min or measured >= MEASURE_FRACTION * cfg.max_epochs
        if measured < 1 or measured % cycle or now <= t0 or not enough:
            return None
        epoch_s = (now - t0) / measured
        fit = math.floor(max(deadline - now, 0.0) * SAFETY / epoch_s)
        end_epoch = min(cfg.max_epochs, epoch + max(fit, 1))
        start = max(step // cfg.accumulate, r["start"])  # not before the warm-up's end
        end = max((step + (end_epoch - epoch) * self.steps_per_epoch) // cfg.accumulate, start + 1)
        r["budget"] = {"start": start, "end": end, "peak": float(self._base(start)), "end_epoch": end_epoch,
                       "decided_after_epoch": epoch, "budget_min": cfg.max_time_min, "epoch_s": epoch_s,
                       "updates_per_s": self.updates_per_epoch / epoch_s}
        self._budget = self._budget_fn(r["budget"])
        self._timed, self.marks = (now - t0, measured), [(epoch, now)]
        return self.describe()

    def _replan(self, epoch: int, step: int, now: float, deadline: float | None,
                compilations: int | None) -> str | None:
        """In the invocation that decided, after each epoch: the mean epoch time measured
        so far (an epoch that compiled, seconds the measurement does not hold, left out)
        against the time left. When the epochs planned no longer fit the time left, or clearly
        more fit :data:`SAFETY` of it, the decay goes from the rate reached to the floor at the
        new last epoch (recorded as the budget's span: a resumed run follows it)."""
        b, cfg = self.decided, self.cfg
        if deadline is None or self._timed is None or epoch >= b["end_epoch"]:
            return None
        (e0, t0), self.marks = self.marks[-1], [(epoch, now)]
        compiled = compilations is not None and compilations != self._compilations
        self._compilations = compilations
        if not compiled and epoch > e0:
            self._timed = (self._timed[0] + now - t0, self._timed[1] + epoch - e0)
        epoch_s = self._timed[0] / self._timed[1]
        fit = math.floor(max(deadline - now, 0.0) * SAFETY / epoch_s)
        end_epoch = min(cfg.max_epochs, epoch + max(fit, 1))
        planned = b["end_epoch"]
        fits = (planned - epoch) * epoch_s <= max(deadline - now, 0.0)  # without the safety margin
        if end_epoch == planned or fits and end_epoch < planned + max(2, LENGTHEN_MARGIN * (planned - epoch)):
            return None
        start = max(step // cfg.accumulate, self.record["start"])
        end = max((step + (end_epoch - epoch) * self.steps_per_epoch) // cfg.accumulate, start + 1)
        b.update(start=start, end=end, peak=self.lr(start), end_epoch=end_epoch, replanned_after_epoch=epoch,
                 replanned_epoch_s=epoch_s)
        self._budget = self._budget_fn(b)
        why = "which compiled a new batch shape" if compiled else f"epochs take {epoch_s:.4g} s"
        change = "shortened" if end_epoch < planned else "lengthened"
        return f"{self.describe()} ({change} after epoch {epoch}, {why})"

    def saved(self, now: float) -> None:
        """Note a checkpoint write that ended at ``now``: one right after the first measured
        epoch end (the invocation's first ``latest``) is not part of the measurement, which
        starts after it (later writes come once per ``checkpoint_interval_min``, not per epoch)."""
        if len(self.marks) == 1 and self.decided is None:
            self.marks[0] = (self.marks[0][0], now)
