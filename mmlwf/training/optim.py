"""Optimisers and learning-rate schedules (optax).

The optimiser is ``[MultiSteps(k)] o chain(clip_by_global_norm, adam|amsgrad|sgd, [decoupled
weight decay], -schedule(update))`` (inside ``multi_transform`` with zero updates for the frozen
parameters of a fine-tuning run): gradients of ``accumulate`` batches are averaged before
clipping and the update, so clipping sees the same gradient a ``k`` times larger batch gives.
The schedule counts optimiser updates. The reduce-on-plateau factor is host state
(:class:`Plateau`) that multiplies the updates, passed to the jitted step as an argument.
A decaying schedule (:data:`DECAYING`) goes from the peak to ``min_learning_rate`` over a
span of updates fixed when the run starts (:mod:`.schedule`); one sized to a time budget is
known only after the first epochs, so it is applied on the host, as a factor through that
same argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import TrainingConfig

if TYPE_CHECKING:
    import jax
    import optax

#: schedules that decay from the peak to ``min_learning_rate`` over a span of updates
DECAYING = ("warmup_cosine", "warmup_linear")
#: ``(start, end)``: the updates where a decaying schedule leaves the peak and reaches the floor
Span = tuple[int, int]
#: the warm-up takes at most this fraction of the updates of ``max_epochs`` (a short run learns)
WARMUP_MAX_FRACTION = 0.1
#: the EMA decay of update ``t`` (from 0) is ``min(ema_decay, (1 + t) / (EMA_RAMP + t))``:
#: the average follows the parameters closely at first (a short run's EMA is not its initial weights)
EMA_RAMP = 10.0


def _run_updates(cfg: TrainingConfig, updates_per_epoch: int) -> int:
    """The updates of ``max_epochs`` epochs."""
    return cfg.max_epochs * max(int(updates_per_epoch), 1)


def warmup_updates(cfg: TrainingConfig, updates_per_epoch: int) -> int:
    """The warm-up in updates: ``warmup_steps``, at most :data:`WARMUP_MAX_FRACTION` of the
    updates of ``max_epochs`` unless ``decay_steps`` states the schedule's length."""
    if cfg.decay_steps is not None:
        return cfg.warmup_steps
    return min(cfg.warmup_steps, int(WARMUP_MAX_FRACTION * _run_updates(cfg, updates_per_epoch)))


def default_span(cfg: TrainingConfig, updates_per_epoch: int, capped: bool = True) -> Span:
    """The decay span of a decaying schedule without a time budget: from the end of the
    warm-up (:func:`warmup_updates`; ``capped=False``: ``warmup_steps``, as runs whose
    checkpoints hold no span had it) to ``decay_steps`` or to the last update of ``max_epochs``."""
    total = cfg.decay_steps if cfg.decay_steps is not None else _run_updates(cfg, updates_per_epoch)
    return (warmup_updates(cfg, updates_per_epoch) if capped else cfg.warmup_steps), int(total)


def schedule_fn(cfg: TrainingConfig, updates_per_epoch: int, xp: Any = np,
                span: Span | None = None, peak: float | None = None,
                warmup: int | None = None) -> Callable[[Any], Any]:
    """``lr(count)`` of the configured schedule, without the plateau factor.

    ``count`` is the number of optimiser updates done before this one. Works with numpy
    (host, for the log) and jax.numpy (inside the step) through ``xp``. ``span``: of a
    decaying schedule (default :func:`default_span`); the rate reaches the floor at ``end``,
    from ``peak`` at ``start`` (default ``learning_rate``). ``warmup``: its length in updates
    (default: a decaying schedule's ``span`` start, else :func:`warmup_updates`).
    """
    lr, floor = cfg.learning_rate, cfg.min_learning_rate
    if warmup is not None:
        warm = int(warmup)
    elif cfg.schedule in DECAYING and span is not None:
        warm = int(span[0])
    else:
        warm = warmup_updates(cfg, updates_per_epoch)
    per_epoch = max(int(updates_per_epoch), 1)
    if cfg.schedule in DECAYING:
        start, end = span if span is not None else default_span(cfg, updates_per_epoch)
        width = max(end - start, 1)
        top = lr if peak is None else float(peak)
    elif cfg.schedule == "exponential":
        every = cfg.decay_steps if cfg.decay_steps is not None else per_epoch

    def lr_at(count):
        count = xp.asarray(count, dtype=xp.float32)
        t = xp.maximum(count - warm, 0.0)
        if cfg.schedule in DECAYING:
            frac = xp.minimum(xp.maximum(count - start, 0.0) / width, 1.0)
            if cfg.schedule == "warmup_cosine":  # (the operations' order kept: same float32 rates)
                base = floor + (top - floor) * 0.5 * (1.0 + xp.cos(math.pi * frac))
            else:
                base = floor + (top - floor) * (1.0 - frac)
        elif cfg.schedule == "exponential":
            base = xp.maximum(lr * xp.power(xp.float32(cfg.decay_rate), t / every), floor)
        else:  # constant, plateau (its factor is applied outside)
            base = xp.asarray(lr, dtype=xp.float32)
        if warm > 0:
            base = base * xp.minimum((count + 1.0) / warm, 1.0)
        return base

    return lr_at


def make_optimizer(cfg: TrainingConfig, updates_per_epoch: int, span: Span | None = None,
                   frozen: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """The optax transformation for ``cfg`` (see module docstring; ``span``: see :func:`schedule_fn`).
    ``frozen``: ``labels(params)`` of ``"frozen"``/``"trained"`` leaves
    (:func:`~.finetune.frozen_labels`): frozen leaves get zero updates (``optax.set_to_zero``: no
    weight decay either), the clipping norm is that of the trained ones."""
    import jax.numpy as jnp
    import optax

    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps))
    elif cfg.optimizer == "amsgrad":
        parts.append(optax.scale_by_amsgrad(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps))
    elif cfg.optimizer == "sgd" and cfg.momentum > 0:
        parts.append(optax.trace(decay=cfg.momentum))
    if cfg.optimizer == "adamw" and cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    lr = schedule_fn(cfg, updates_per_epoch, jnp, span)
    parts.append(optax.scale_by_schedule(lambda count: -lr(count)))
    tx = optax.chain(*parts)
    if frozen is not None:
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, frozen)
    if cfg.accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate)
    return tx


def ema_decay_at(decay: float, opt_state: Any) -> jax.Array:
    """The EMA decay of the update that produced ``opt_state`` (see :data:`EMA_RAMP`)."""
    import jax
    import jax.numpy as jnp
    import optax

    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    count = next(x.count for x in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(x))
    t = count.astype(jnp.float32) - 1.0  # updates done before this one
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (EMA_RAMP + t))


def did_update(tx: optax.GradientTransformation, opt_state: Any) -> jax.Array:
    """Whether the last ``tx.update`` applied an optimiser update (False while accumulating)."""
    import jax.numpy as jnp
    import optax

    if isinstance(tx, optax.MultiSteps):
        return tx.has_updated(opt_state)
    return jnp.asarray(True)


@dataclass
class Plateau:
    """Reduce-on-plateau state (host side, saved in checkpoints)."""

    factor: float = 1.0
    best: float | None = None
    bad: int = 0
    cuts: int = 0

    def observe(self, value: float, cfg: TrainingConfig) -> bool:
        """Record a validation loss; return True when the rate was cut."""
        if cfg.schedule != "plateau":
            return False
        if self.best is None or value < self.best * (1.0 - cfg.plateau_threshold):
            self.best, self.bad = float(value), 0
            return False
        self.bad += 1
        if self.bad < cfg.plateau_patience:
            return False
        floor = cfg.min_learning_rate / cfg.learning_rate
        new = max(self.factor * cfg.plateau_factor, floor)
        self.bad = 0
        if new < self.factor:
            self.factor, self.cuts = new, self.cuts + 1
            return True
        return False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Plateau:
        return cls(**(d or {}))
