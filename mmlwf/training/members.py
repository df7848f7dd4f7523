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


def member_errors(forward: Callable, params: Any, loader: Loader,
                  table: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (error, spread)}`` of the stacked ``params`` on every batch of ``loader``, for
    each of :data:`SCALED` the model predicts and the data hold: the error of the member mean
    (energies ``(n,)`` eV, forces ``(n_atoms, 3)`` eV/Å) and the raw spread ``(n,)`` per
    structure or atom, real entries only (float64)."""
    import jax

    run = jax.jit(ensemble_forward(forward))
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


def fit_spread_scales(forward: Callable, params: Any, loader: Loader, table: np.ndarray | None) -> dict[str, float]:
    """``{"energy": s_E, "forces": s_F}``: ``s = sqrt(mean(|error|^2 / spread^2))`` over the
    points of :func:`member_errors` (points with zero spread left out)."""
    scales = {}
    for name, (error, spread) in member_errors(forward, params, loader, table).items():
        sq = (error * error).reshape(len(error), -1).sum(axis=1)
        keep = spread > 0
        if np.any(keep):
            scales[name] = float(np.sqrt(np.mean(sq[keep] / spread[keep] ** 2)))
    return scales


def record_spread_scales(job, table: np.ndarray | None, log: RunLog) -> dict[str, float] | None:
    """Fit an ensemble run's spread scales with its ``best`` checkpoint (written) on its
    validation loader and record them in ``model.json`` and ``train.log``; None (nothing done)
    for a single model, ``ensemble.calibrate: false`` or no validation data.
    ``job``: the :class:`~.setup.TrainingJob`."""
    if job.config.members == 1 or not job.config.ensemble.calibrate or job.valid_loader is None:
        return None
    params, info = load_params(job.run_dir, "best")
    scale = fit_spread_scales(job.forward, params, job.valid_loader, table)
    info[ENSEMBLE_KEY] = {**info[ENSEMBLE_KEY], "scale": scale}
    write_json(RunDir(job.run_dir).model_json, info)
    log.line("ensemble spreads scaled on the validation split (best parameters): "
             + ", ".join(f"{k} x{v:.3g}" for k, v in scale.items()), terminal=False)
    return scale
