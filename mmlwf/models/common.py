"""Plumbing both models share: inputs from a batch, masks, the total-charge correction, the
centroid dipole, flax variables and parameter initialisation.

Shapes as in :mod:`mmlwf.batch`: ``A`` atoms, ``P`` pairs, ``B`` graphs, ``G`` grid points.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..batch import GRID_INPUTS, LONG_INPUTS, MODEL_INPUTS, GraphBatch, as_batch


def cast_inputs(Z, R, dst, src, atom_graph):
    """``(Z, R, dst, src, atom_graph, dtype)`` with integer indices as int32 and ``R`` in the
    model's float type ``dtype`` (``R`` 's own, float32 for integer positions)."""
    dtype = R.dtype if jnp.issubdtype(R.dtype, jnp.floating) else jnp.float32
    return (Z.astype(jnp.int32), R.astype(dtype), dst.astype(jnp.int32), src.astype(jnp.int32),
            atom_graph.astype(jnp.int32), dtype)


def masks(graph_mask, atom_mask, pair_mask, atom_graph, dst, src, dtype):
    """Float masks ``(gm (B,), am (A,), pm (P,))``: atoms of padding graphs and pairs touching
    a masked atom are out."""
    gm = graph_mask.astype(dtype)
    am = atom_mask.astype(dtype) * gm[atom_graph]
    pm = pair_mask.astype(dtype) * am[dst] * am[src]
    return gm, am, pm


def graph_sums(x, atom_graph, n_graphs: int):
    """``(B, ...)`` per-graph sums of per-atom ``x (A, ...)``."""
    return jax.ops.segment_sum(x, atom_graph, num_segments=n_graphs)


def total_charge(Qtot, n_graphs: int, dtype):
    """``Qtot (B,)`` in ``dtype``; zeros when None (neutral molecules)."""
    return jnp.zeros(n_graphs, dtype) if Qtot is None else jnp.asarray(Qtot).astype(dtype)


def correct_total_charge(q, Qtot, atom_graph, am, gm, n_real):
    """Charges ``q (A,)`` or ``(A, k)`` (``k`` per atom) shifted evenly over each molecule's real
    charges so that they sum to ``Qtot (B,)``; 0 on padding atoms.

    ``n_real (B,)``: real atoms per graph (float, as :func:`graph_sums` of ``am``).
    """
    n_graphs = gm.shape[0]
    per_atom = 1 if q.ndim == 1 else q.shape[1]
    q_mol = graph_sums(q if q.ndim == 1 else jnp.sum(q, axis=1), atom_graph, n_graphs)
    n_charges = n_real if per_atom == 1 else n_real * per_atom
    excess = (Qtot * gm - q_mol) / jnp.maximum(n_charges, 1.0)
    if q.ndim == 1:
        return (q + excess[atom_graph]) * am
    return (q + excess[atom_graph][:, None]) * am[:, None]


def centroid(R, atom_graph, am, n_real):
    """``(B, 3)`` centroid of each graph's real atoms (0 for empty graphs)."""
    return graph_sums(R * am[:, None], atom_graph, n_real.shape[0]) / jnp.maximum(n_real, 1.0)[:, None]


def centroid_dipole(q, positions, R, atom_graph, am, gm, n_real):
    """``(B, 3)`` dipole of charges ``q`` about the centroid of each graph's atoms (0 for
    padding graphs): atom-centred charges ``q (A,)`` at ``R``, or ``q (A, k)`` at
    ``positions (A, k, 3)``."""
    centre = centroid(R, atom_graph, am, n_real)
    n_graphs = gm.shape[0]
    if q.ndim == 1:
        dipole = graph_sums(q[:, None] * (R - centre[atom_graph]), atom_graph, n_graphs)
    else:
        rel = positions - centre[atom_graph][:, None, :]
        dipole = graph_sums(jnp.sum(q[..., None] * rel, axis=1), atom_graph, n_graphs)
    return dipole * gm[:, None]


# -- using a model on a batch


def variables(params):
    """Flax variables ``{"params": ...}`` from either those or the bare params tree."""
    if isinstance(params, Mapping) and "params" in params:
        return params
    return {"params": params}


def batch_inputs(batch: GraphBatch | Mapping, *, grid: bool = False) -> dict:
    """The model inputs of a batch as jax arrays, named as in the models' ``__call__``
    (:data:`mmlwf.batch.MODEL_INPUTS`); a missing ``Qtot`` becomes zeros. With ``grid`` also
    the ESP grid inputs (None where the batch has no grid). A batch with a long-range pair
    list adds it as ``long_dst``, ``long_src``, ``long_pair_mask``
    (:data:`mmlwf.batch.LONG_INPUTS`); without one these keys are absent, so models that do
    not take them are called as before (the assemblers fill the list only for a model whose
    kind asks for it)."""
    b = as_batch(batch)
    inputs = {k: jnp.asarray(b[k]) for k in MODEL_INPUTS if k != "Qtot"}
    inputs["Qtot"] = total_charge(b.Qtot, inputs["graph_mask"].shape[0], inputs["R"].dtype)
    if b.long_pairs is not None:
        inputs.update(zip(LONG_INPUTS, map(jnp.asarray, b.long_pairs[:3])))
    if grid:
        for k in GRID_INPUTS:
            value = b.get(k)
            inputs[k] = None if value is None else jnp.asarray(value)
    return inputs


def init_params(model, rng, batch: GraphBatch | Mapping, *, grid: bool = False):
    """Fresh flax variables ``{"params": ...}`` for ``model`` from one example batch."""
    return jax.jit(model.init)(rng, **batch_inputs(batch, grid=grid))
