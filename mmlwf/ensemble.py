"""Ensembles of models: the member axis and what is computed from it (issue 16).

Two kinds. A ``full`` ensemble of ``M`` members is one model whose parameters carry a leading
member axis: every leaf of ``params``, ``opt_state`` and ``ema_params`` of a checkpoint (and
every array of an export) has shape ``(M, ...)``. A ``shallow`` ensemble of ``H`` members is
one parameter set without a member axis: a shared representation with ``H`` output heads
(PhysNet's ``output_heads``, resolved from the ``ensemble`` section into the model config);
its model forward gives the heads' energies ``energy_members (H, B)`` beside their mean.
``model.json`` records either under :data:`ENSEMBLE_KEY`, the one home of the kind::

    "ensemble": {"size": M, "kind": "full", "member_seeds": [...],
                 "scale": {"energy": s_E, "forces": s_F}}
    "ensemble": {"size": H, "kind": "shallow", "loss": "nll", "scale": {...}}

(``scale``: the factors fitted on the validation split that multiply the reported spreads;
absent or 1: raw spreads). Its absence means one model without a member axis, so that every
run and export written before ensembles existed keeps its meaning.

A prediction of an ensemble is the member mean; its uncertainty the spread over members,
``sqrt(mean over members |value_m - mean|^2)`` (``ddof=0``), for vectors the squared length
over the last axis (per atom for forces, eV/Å: the calculator's ``forces_uncertainty``).
Helpers work with numpy or jax.numpy (``xp``), so training, inference and MD share them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: the key of ``model.json`` (and an export's ``model_info``) describing an ensemble
ENSEMBLE_KEY = "ensemble"
#: ensemble kinds: ``full`` (independent members, vmapped parameters), ``shallow`` (output heads)
KINDS = ("full", "shallow")
#: outputs whose last axis is a vector (the spread is taken over its length)
VECTOR_OUTPUTS = frozenset({"forces", "dipole"})
#: outputs that get a spread (``<name>_spread``) in :func:`ensemble_forward`
SPREAD_OUTPUTS = ("energy", "forces", "dipole", "esp", "charges")


def ensemble_info(info: Mapping | None) -> dict | None:
    """The ``ensemble`` entry of a ``model.json`` / export ``model_info``, None for one model."""
    entry = (info or {}).get(ENSEMBLE_KEY)
    return dict(entry) if entry else None


def ensemble_size(info: Mapping | None) -> int:
    """Members of the model described by ``info`` (1: a single model, no member axis)."""
    entry = ensemble_info(info)
    return 1 if entry is None else int(entry["size"])


def ensemble_kind(info: Mapping | None) -> str | None:
    """``"full"`` or ``"shallow"`` for an ensemble (a record without ``kind``: full), None for one model."""
    entry = ensemble_info(info)
    return None if entry is None or int(entry["size"]) == 1 else str(entry.get("kind", "full"))


def parameter_members(info: Mapping | None) -> int:
    """The length of the parameters' leading member axis: the size of a ``full`` ensemble, 1
    (no member axis) for one model or a ``shallow`` ensemble (one parameter set)."""
    return ensemble_size(info) if ensemble_kind(info) == "full" else 1


def spread_scale(info: Mapping | None, quantity: str) -> float:
    """The factor that multiplies the raw spread of ``quantity`` (``"energy"``, ``"forces"``, ...)
    as fitted on the validation split; 1.0 when none was fitted."""
    entry = ensemble_info(info) or {}
    return float((entry.get("scale") or {}).get(quantity, 1.0))


def member_stats(values, vector_ndim: int = 0, xp: Any = np):
    """``(mean, spread)`` over the leading member axis of ``values (M, ...)``.

    ``spread = sqrt(mean_m |values_m - mean|^2)``, the squared length over the last
    ``vector_ndim`` axes (``(M, A, 3)`` forces -> ``(A,)``), ``ddof=0``."""
    mean = values.mean(axis=0)
    sq = (values - mean) ** 2
    if vector_ndim:
        sq = sq.sum(axis=tuple(range(-vector_ndim, 0)))
    return mean, xp.sqrt(sq.mean(axis=0))


def ensemble_forward(forward: Callable, kind: str = "full") -> Callable:
    """``forward(params, batch) -> outputs`` of an ensemble: every output is the member mean,
    and each of :data:`SPREAD_OUTPUTS` present also gets ``<name>_spread`` (raw, unscaled) and
    ``<name>_members`` (``(M, ...)``). Not jitted; the batch is shared by the members.

    ``kind`` ``full``: ``forward`` is the single model's, vmapped over the leading member axis
    of stacked parameters. ``shallow``: ``forward`` is the model kind's heads forward, whose
    outputs already carry the head axis ``(H, ...)`` (PhysNet: per-head forces from ``H``
    backward passes, :func:`mmlwf.models.heads.head_energy_and_forces`)."""
    import jax
    import jax.numpy as jnp

    if kind not in KINDS:
        raise ValueError(f"unknown ensemble kind {kind!r} (known: {', '.join(KINDS)})")
    members = jax.vmap(forward, in_axes=(0, None)) if kind == "full" else forward

    def run(params, batch):
        out = members(params, batch)
        result = {}
        for name, value in out.items():
            if name in SPREAD_OUTPUTS:
                mean, spread = member_stats(value, 1 if name in VECTOR_OUTPUTS else 0, jnp)
                result[name], result[f"{name}_spread"], result[f"{name}_members"] = mean, spread, value
            else:
                result[name] = value.mean(axis=0)
        return result

    return run


def member(params, k: int):
    """Member ``k``'s parameters (no member axis) of stacked ``params``."""
    import jax

    return jax.tree.map(lambda leaf: leaf[k], params)


def stack_members(trees) -> Any:
    """One stacked tree (leading member axis) of the members' trees (same structure)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
