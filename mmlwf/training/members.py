"""What an ensemble's training adds after its loop: the factors that scale its spreads.

The spread over members ranks the error but rarely sizes it: members trained on the same data
agree more than their common error suggests. After an ensemble's run completes, one pass over
the validation split with its ``best`` parameters fits, for energies and forces, the factor
``s`` that maximises the Gaussian likelihood of the errors of the member mean under spreads
``s * sigma``: ``s^2 = mean(|error|^2 / sigma^2)`` over structures (energies, eV) and atoms
(force vectors, eV/Å), the closed form of :func:`mmlwf.analysis.calibration.fit_scale`. They go
to ``model.json`` (``ensemble.scale``), and every reported spread (calculator, evaluation, MD)
is multiplied by them (:func:`mmlwf.ensemble.spread_scale`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..ensemble import ENSEMBLE_KEY, ensemble_forward
from ..fileio import write_json
from ..rundir import RunDir
from .checkpoint import load_params
from .history import RunLog
from .loaders import Loader
from .losses import prepare_batch

#: the quantities whose spreads get a fitted scale: (output, target, graph or atom mask)
SCALED = (("energy", "E_target", "graph_mask"), ("forces", "F", "atom_mask"))


def member_errors(forward: Callable, params: Any, loader: Loader, table: np.ndarray | None,
                  kind: str = "full") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (error, spread)}`` of the ensemble ``params`` (``kind`` full: stacked, ``forward``
    the single model's; shallow: ``forward`` the heads forward) on every batch of ``loader``, for
    each of :data:`SCALED` the model predicts and the data hold: the error of the member mean
    (energies ``(n,)`` eV, forces ``(n_atoms, 3)`` eV/Å) and the raw spread ``(n,)`` per
    structure or atom, real entries only (float64)."""
    import jax

    run = jax.jit(ensemble_forward(forward, kind))
    parts: dict[str, tuple[list, list]] = {}
    for raw in loader.epoch(0):
        batch = prepare_batch(raw, table)
        out = jax.device_get(run(params, batch))
        for name, target, mask in SCALED:
            reference = getattr(batch, target)
            if name not in out or reference is None:
                continue
            keep = np.asarray(getattr(batch, mask), bool)
            errors, spreads = parts.setdefault(name, ([], []))
            errors.append((np.asarray(out[name], np.float64) - np.asarray(reference, np.float64))[keep])
            spreads.append(np.asarray(out[f"{name}_spread"], np.float64)[keep])
    return {name: (np.concatenate(e), np.concatenate(s)) for name, (e, s) in parts.items()}


def fit_spread_scales(forward: Callable, params: Any, loader: Loader, table: np.ndarray | None,
                      kind: str = "full") -> dict[str, float]:
    """``{"energy": s_E, "forces": s_F}``: ``s = sqrt(mean(|error|^2 / spread^2))`` over the
    points of :func:`member_errors` (points with zero spread left out)."""
    scales = {}
    for name, (error, spread) in member_errors(forward, params, loader, table, kind).items():
        sq = (error * error).reshape(len(error), -1).sum(axis=1)
        keep = spread > 0
        if np.any(keep):
            scales[name] = float(np.sqrt(np.mean(sq[keep] / spread[keep] ** 2)))
    return scales


def record_spread_scales(job, table: np.ndarray | None, log: RunLog) -> dict[str, float] | None:
    """Fit an ensemble run's spread scales with its ``best`` checkpoint (written) on its
    validation loader and record them in ``model.json`` and ``train.log``; None (nothing done)
    for a single model, ``ensemble.calibrate: false`` or no validation data.
    ``job``: the :class:`~.setup.TrainingJob`. A shallow ensemble's spreads are its heads'
    (per-head forces: the model kind's heads forward)."""
    if job.config.ensemble_size == 1 or not job.config.ensemble.calibrate or job.valid_loader is None:
        return None
    params, info = load_params(job.run_dir, "best")
    forward, kind = job.forward, "full"
    if job.config.shallow:
        from ..models.registry import kind_of_model

        forward, kind = kind_of_model(job.model).make_heads_forward(job.model), "shallow"
    scale = fit_spread_scales(forward, params, job.valid_loader, table, kind)
    info[ENSEMBLE_KEY] = {**info[ENSEMBLE_KEY], "scale": scale}
    write_json(RunDir(job.run_dir).model_json, info)
    log.line("ensemble spreads scaled on the validation split (best parameters): "
             + ", ".join(f"{k} x{v:.3g}" for k, v in scale.items()), terminal=False)
    return scale


class MemberSelection:
    """The ``best`` parameters of an ensemble chosen per member, as a single run chooses its own.

    Member ``k``'s best epoch is the one of its lowest validation loss (``valid_loss_m{k}``,
    its EMA parameters when kept); the ``best`` checkpoint stacks each member's best
    parameters (so it may combine epochs). With ``early_stopping_patience`` a member stops
    being selected once that many epochs have passed since its best, as a single run would
    stop there; the run stops when every member has (the loop's ``best_epoch`` is the last
    epoch any member improved, ``best_loss`` the mean of the members' best losses). The
    members' bests are kept in the checkpoint meta under :data:`META_KEY`; the held best
    parameters are read back from the ``best`` checkpoint on resume.
    """

    META_KEY = "members"

    def __init__(self, size: int, meta: dict | None = None) -> None:
        meta = dict(meta or {})
        self.loss: list[float | None] = list(meta.get("best_loss") or [None] * size)
        self.epoch: list[int | None] = list(meta.get("best_epoch") or [None] * size)
        self.held: tuple[Any, Any] | None = None  # (params, ema_params) of the best so far

    def to_meta(self) -> dict:
        return {"best_loss": self.loss, "best_epoch": self.epoch}

    def resume(self, run_dir, ema: bool) -> None:
        """Hold the ``best`` checkpoint's parameters (none before the first best epoch)."""
        if all(e is None for e in self.epoch):
            return
        params, _ = load_params(run_dir, "best", ema=False)
        self.held = (params, load_params(run_dir, "best", ema=True)[0] if ema else None)

    def improved(self, epoch_no: int, row: dict, patience: int | None) -> np.ndarray:
        """Members whose validation loss after epoch ``epoch_no`` is their best (and who have
        not stopped); updates their best loss and epoch."""
        out = np.zeros(len(self.loss), bool)
        for k, best in enumerate(self.loss):
            stopped = patience is not None and self.epoch[k] is not None and epoch_no - 1 - self.epoch[k] >= patience
            loss = float(row[f"valid_loss_m{k}"])
            if not stopped and (best is None or loss < best):
                self.loss[k], self.epoch[k], out[k] = loss, epoch_no, True
        return out

    def select(self, improved: np.ndarray, params: Any, ema_params: Any) -> tuple[Any, Any]:
        """The stacked best trees: ``params``/``ema_params`` for the ``improved`` members, the
        held best for the others (held afterwards)."""
        import jax
        import jax.numpy as jnp

        def merge(current, held):
            if current is None:
                return None
            if held is None:  # a copy: the state's buffers are donated to the next step
                return jax.tree.map(jnp.copy, current)
            mask = jnp.asarray(improved)
            return jax.tree.map(lambda c, h: jnp.where(mask.reshape(-1, *([1] * (c.ndim - 1))), c, h), current, held)

        held = self.held or (None, None)
        self.held = (merge(params, held[0]), merge(ema_params, held[1]))
        return self.held

    def keep_best(self, loop, cadence, epoch_no: int, row: dict, patience: int | None, trees: list,
                  meta: dict) -> bool:
        """After epoch ``epoch_no``'s validation: record the members' bests in ``loop``
        (:class:`~.loop_state.LoopState`) and hand ``cadence`` (:class:`~.cadence.Cadence`)
        the stacked best ``trees`` (params, ema_params: as saved) when a member improved."""
        improved = self.improved(epoch_no, row, patience)
        loop.extra[self.META_KEY] = self.to_meta()
        if not improved.any():
            return False
        loop.best_epoch, loop.best_loss = self.best()
        cadence.keep_best(epoch_no, *self.select(improved, *trees), meta)
        return True

    def best(self) -> tuple[int | None, float | None]:
        """``(best_epoch, best_loss)`` for the loop (see the class docstring)."""
        epochs = [e for e in self.epoch if e is not None]
        losses = [v for v in self.loss if v is not None]
        return (max(epochs) if epochs else None, float(np.mean(losses)) if losses else None)
