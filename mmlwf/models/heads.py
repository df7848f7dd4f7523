"""Output heads of a shallow ensemble (Kellner & Ceriotti, "Uncertainty quantification by direct
propagation of shallow ensembles", 2024; apax's ``n_shallow_ensemble``).

A model with ``H`` output heads shares its representation; only the last (output) layers give
``H`` sets of outputs. Its ``apply`` returns the heads' mean under the usual names (``energy
(B,)`` eV, ``charges (A,)``, ``dipole (B,3)``) and each head's values under
``<name>_members`` (``(H, ...)``, :data:`HEAD_OUTPUTS`): training differentiates the mean energy
once (forces of the mean, the cost of one model) and forms the NLL from ``energy_members``;
:func:`head_energy_and_forces` gives every head's forces for the spreads (inference, MD).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..batch import GraphBatch
from .common import batch_inputs, variables

#: outputs each head predicts: ``<name>_members (H, ...)`` beside their mean
HEAD_OUTPUTS = ("energy", "charges", "dipole")
#: outputs the same for every head in :func:`head_energy_and_forces` (of the mean model)
SHARED_OUTPUTS = ("atomic_energies", "nh_penalty")


def output_kernel_init(heads: int) -> nn.initializers.Initializer:
    """The kernel initialiser of the output layers: zeros for one head (PhysNet's: a fresh model
    starts at the per-element energy shift); LeCun normal for several, as apax initialises its
    readout, so that the heads start distinct (identical heads trained on their mean stay
    identical: their spread would stay 0)."""
    return nn.initializers.zeros if heads == 1 else nn.initializers.lecun_normal()


def head_mean(results: dict) -> dict:
    """``results`` whose :data:`HEAD_OUTPUTS` carry a leading head axis ``(H, ...)``: those moved
    to ``<name>_members`` and replaced by their mean over the heads; ``atomic_energies``
    ``(H, A)`` replaced by its mean."""
    out = dict(results)
    for name in HEAD_OUTPUTS:
        if name in out:
            out[f"{name}_members"] = out[name]
            out[name] = out[name].mean(axis=0)
    if "atomic_energies" in out:
        out["atomic_energies"] = out["atomic_energies"].mean(axis=0)
    return out


def head_energy_and_forces(model, params, batch: GraphBatch | Mapping) -> dict:
    """Every output of a model with ``H > 1`` output heads with a leading head axis: energies
    ``(H, B)`` eV, forces ``(H, A, 3)`` eV/Å with head ``h``'s forces ``-dE_h/dR`` (0 on
    padding atoms), ``charges (H, A)``/``dipole (H, B, 3)`` when predicted, and
    :data:`SHARED_OUTPUTS` (of the mean) repeated over the heads.

    One forward pass and ``H`` backward passes: one ``jax.vjp`` of the heads' total energies,
    pulled back with the ``H`` one-hot cotangents under ``jax.vmap``; so about ``H`` times the
    backward cost of one model (inference and MD with uncertainties; training differentiates
    the mean energy once). Jit-compatible; :func:`mmlwf.ensemble.ensemble_forward` with
    ``kind="shallow"`` turns it into means and spreads."""
    inputs = batch_inputs(batch)
    variables_ = variables(params)
    graph_mask, atom_mask = inputs["graph_mask"], inputs["atom_mask"]

    def head_totals(R):
        out = model.apply(variables_, **{**inputs, "R": R})
        return jnp.sum(jnp.where(graph_mask, out["energy_members"], 0.0), axis=1), out  # (H,)

    totals, pullback, out = jax.vjp(head_totals, inputs["R"], has_aux=True)
    (grads,) = jax.vmap(pullback)(jnp.eye(totals.shape[0], dtype=totals.dtype))  # (H, A, 3)
    result = {"energy": out["energy_members"], "forces": jnp.where(atom_mask[None, :, None], -grads, 0.0)}
    for name in HEAD_OUTPUTS[1:]:
        if f"{name}_members" in out:
            result[name] = out[f"{name}_members"]
    for name in SHARED_OUTPUTS:
        if name in out:
            result[name] = jnp.broadcast_to(out[name], (totals.shape[0], *out[name].shape))
    return result
