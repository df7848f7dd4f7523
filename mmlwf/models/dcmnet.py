"""DCMNet in flax.linen + e3x: distributed charges fitted to the ESP.

Per atom the network predicts ``n_dcm`` point charges and ``n_dcm`` displacement vectors.
Atomic features come from ``num_iterations`` equivariant message passes over the cutoff
graph (``max_degree >= 1``, so features carry l=1 parts). The charges are read from the
scalar (l=0) channel; the displacements from the l=1 (vector) channel by a bias-free linear
map, so they rotate with the molecule, and are bounded smoothly to ``max_displacement`` Å:
``d = max_displacement * tanh(|v|) v / |v|``. The charges of each molecule are shifted
evenly (over its real charges only, padding masked) so that they sum to its total charge.

The potential (V = eV/e) at a grid point is ``k_e sum_j q_j / |r - p_j|`` over the charges
of the grid point's own molecule only (``k_e`` = 14.399645 eV Å / e²); no term couples two
molecules of a batch. The distance is softened as ``sqrt(|r - p|² + ESP_SOFTENING²)``
(1e-3 Å: relative change below 1e-6 beyond 1 Å), which keeps values and gradients finite
when a charge sits on a grid point. Cost per batch: O(grid points × atoms × n_dcm), a dense
masked product, so keep batches to a few tens of small molecules.

Outputs (:meth:`DCMNet.__call__`): ``dcm_charges (A, n_dcm)`` e, ``dcm_positions (A, n_dcm, 3)``
Å, ``charges (A,)`` atomic monopoles (sum of an atom's charges, e), ``dipole (B, 3)`` e·Å
from the distributed charges about the centroid of the atoms, and with grid inputs
``esp (G,)`` V. Padding atoms, graphs and grid points get zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp

from ..batch import GRID_INPUTS, MODEL_INPUTS, GraphBatch
from ..constants import COULOMB_CONSTANT
from ..settings import DCMNetSettings
from . import common
from .common import cast_inputs, centroid_dipole, correct_total_charge, graph_sums, masks, total_charge
from .pairs import pair_basis
from .settings import build, check, field_defaults, settings_of

#: softening length of the charge-grid distance, Å
ESP_SOFTENING = 1.0e-3

#: inputs of :meth:`DCMNet.__call__`, in order, as named in a batch
INPUT_KEYS = MODEL_INPUTS + GRID_INPUTS


def _safe_norm(v, axis=-1):
    """``(|v|, |v|²)`` with a finite gradient at ``v = 0``."""
    r2 = jnp.sum(v * v, axis=axis)
    safe = jnp.where(r2 > 0, r2, 1.0)
    return jnp.where(r2 > 0, jnp.sqrt(safe), 0.0), r2


def bounded_displacement(v, max_displacement: float):
    """``max_displacement * tanh(|v|) v/|v|`` along the last axis (smooth, equivariant, 0 at 0)."""
    r, r2 = _safe_norm(v)
    # tanh(r)/r with its series 1 - r²/3 near 0 (no 0/0)
    ratio = jnp.where(r2 > 1e-12, jnp.tanh(r) / jnp.where(r2 > 1e-12, r, 1.0), 1.0 - r2 / 3.0)
    return max_displacement * ratio[..., None] * v


def esp_at_points(charges, positions, charge_graph, charge_mask, grid, grid_graph, grid_mask):
    """Potential in V at each grid point from the charges of its own molecule.

    ``charges (C,)`` e, ``positions (C,3)`` Å, ``charge_graph (C,)`` molecule of each charge,
    ``charge_mask (C,)``; ``grid (G,3)`` Å, ``grid_graph (G,)``, ``grid_mask (G,)``.
    Returns ``(G,)`` V, 0 at padding points. Charges and points of other molecules never
    interact (dense masked sum, O(G·C)).
    """
    dtype = grid.dtype
    same = (grid_graph[:, None] == charge_graph[None, :]) & grid_mask[:, None] & charge_mask[None, :]
    diff = grid[:, None, :] - positions[None, :, :]
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1) + jnp.asarray(ESP_SOFTENING**2, dtype))
    terms = jnp.where(same, charges[None, :] / dist, 0.0)
    return COULOMB_CONSTANT * jnp.sum(terms, axis=1)


def nearest_atom_distance(R, atom_graph, atom_mask, grid, grid_graph, grid_mask):
    """Distance (Å) from each grid point to the nearest atom of its own molecule (0 for padding)."""
    same = (grid_graph[:, None] == atom_graph[None, :]) & atom_mask[None, :]
    diff = grid[:, None, :] - R[None, :, :]
    d2 = jnp.where(same, jnp.sum(diff * diff, axis=-1), jnp.inf)
    d = jnp.sqrt(jnp.min(d2, axis=1))
    return jnp.where(grid_mask & jnp.isfinite(d), d, 0.0)


_DEFAULTS = field_defaults(DCMNetSettings)  # declared in mmlwf.settings.models


class DCMNet(nn.Module):
    """Distributed charge model: ``n_dcm`` charges per atom at learned, bounded displacements.

    Fields are the model configuration (see :func:`build_model` / :func:`model_config`).
    """

    n_dcm: int = _DEFAULTS["n_dcm"]
    features: int = _DEFAULTS["features"]
    max_degree: int = _DEFAULTS["max_degree"]
    num_iterations: int = _DEFAULTS["num_iterations"]
    num_basis_functions: int = _DEFAULTS["num_basis_functions"]
    cutoff: float = _DEFAULTS["cutoff"]
    max_displacement: float = _DEFAULTS["max_displacement"]
    max_atomic_number: int = _DEFAULTS["max_atomic_number"]

    @property
    def pair_cutoff(self) -> float:
        """The cutoff the neighbour list must reach for this model."""
        return float(self.cutoff)

    @nn.compact
    def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot=None,
                 grid=None, grid_graph=None, grid_mask=None) -> dict:
        _check_fields(self)
        n_atoms = Z.shape[0]
        n_graphs = graph_mask.shape[0]
        Z, R, dst, src, atom_graph, dtype = cast_inputs(Z, R, dst, src, atom_graph)
        gm, am, pm = masks(graph_mask, atom_mask, pair_mask, atom_graph, dst, src, dtype)

        _, basis = pair_basis(R, dst, src, pm, cutoff=self.cutoff, num_basis_functions=self.num_basis_functions,
                              max_degree=self.max_degree)

        F = self.features
        x = e3x.nn.Embed(num_embeddings=self.max_atomic_number + 1, features=F, name="embed")(Z).astype(dtype)
        for t in range(self.num_iterations):
            y = e3x.nn.MessagePass(include_pseudotensors=False, max_degree=self.max_degree, name=f"message_{t}")(
                x, basis, dst_idx=dst, src_idx=src, num_segments=n_atoms
            ).astype(dtype)  # e3x's MessagePass returns float64 under jax_enable_x64 whatever its inputs
            y = e3x.nn.add(x, y)
            y = e3x.nn.Dense(F, name=f"dense_a_{t}")(y)
            y = e3x.nn.silu(y)
            y = e3x.nn.Dense(F, name=f"dense_b_{t}")(y)
            x = e3x.nn.add(x, y)

        # charges from the invariant channel, per-element offsets
        s = x[:, 0, 0, :]
        s = nn.silu(nn.Dense(F, name="charge_hidden")(s))
        q = nn.Dense(self.n_dcm, kernel_init=nn.initializers.zeros, name="charge_out")(s)
        q_shift = self.param("charge_shift", nn.initializers.zeros, (self.max_atomic_number + 1, self.n_dcm))
        q = (q + q_shift[Z]) * am[:, None]
        # displacements from the vector channel (bias-free: rotate with the molecule)
        v = x[:, 0, 1:4, :]  # (A, 3, F), e3x's l=1 components are Cartesian x, y, z
        v = nn.Dense(self.n_dcm, use_bias=False, name="displacement_out")(v)  # (A, 3, n_dcm)
        d = bounded_displacement(jnp.swapaxes(v, 1, 2), self.max_displacement)  # (A, n_dcm, 3)
        pos = (R[:, None, :] + d) * am[:, None, None]

        # total-charge constraint, spread evenly over the molecule's real charges
        n_real = graph_sums(am, atom_graph, n_graphs)
        q = correct_total_charge(q, total_charge(Qtot, n_graphs, dtype), atom_graph, am, gm, n_real)

        out: dict[str, Any] = {
            "dcm_charges": q,
            "dcm_positions": pos,
            "charges": jnp.sum(q, axis=1),
            "dipole": centroid_dipole(q, pos, R, atom_graph, am, gm, n_real),
        }
        if grid is not None:
            grid = jnp.asarray(grid).astype(dtype)
            grid_graph = jnp.asarray(grid_graph).astype(jnp.int32)
            gmask = jnp.asarray(grid_mask).astype(bool) & (gm[grid_graph] > 0)
            c_graph = jnp.repeat(atom_graph, self.n_dcm)
            c_mask = jnp.repeat(am > 0, self.n_dcm)
            out["esp"] = esp_at_points(q.reshape(-1), pos.reshape(-1, 3), c_graph, c_mask, grid, grid_graph, gmask)
        return out


# -- using the model


def batch_inputs(batch: GraphBatch | Mapping) -> dict:
    """The model inputs of a batch (:func:`mmlwf.models.common.batch_inputs` with the grid)."""
    return common.batch_inputs(batch, grid=True)


def forward(model: DCMNet, params, batch: GraphBatch | Mapping, esp_decay_length: float | None = None) -> dict:
    """The model's outputs on a batch; with grid keys also ``esp`` and ``esp_loss_weight``.

    ``esp_loss_weight (G,)``: the weight of each grid point in the ESP loss,
    ``exp(-d / esp_decay_length)`` with ``d`` the distance (Å) to the nearest atom of the
    point's molecule (emphasises points near the molecule), or 1 when ``esp_decay_length``
    is None; 0 on padding points. Jit-compatible.
    """
    inputs = batch_inputs(batch)
    out = dict(model.apply(common.variables(params), **inputs))
    if inputs["grid"] is not None:
        gmask = inputs["grid_mask"].astype(bool)
        if esp_decay_length is None:
            w = gmask.astype(out["esp"].dtype)
        else:
            d = nearest_atom_distance(inputs["R"].astype(out["esp"].dtype), inputs["atom_graph"],
                                      inputs["atom_mask"].astype(bool), inputs["grid"].astype(out["esp"].dtype),
                                      inputs["grid_graph"], gmask)
            w = jnp.where(gmask, jnp.exp(-d / esp_decay_length), 0.0)
        out["esp_loss_weight"] = jax.lax.stop_gradient(w)
    return out


def init_params(model: DCMNet, rng, batch: GraphBatch | Mapping):
    """Fresh flax variables ``{"params": ...}`` for ``model`` from one example batch."""
    return common.init_params(model, rng, batch, grid=True)


# -- configuration

def _check_fields(m) -> None:
    """Raise ValueError on a configuration the model cannot run."""
    check(DCMNetSettings, m)


def pair_cutoff(model: DCMNet) -> float:
    """How far the neighbour list must reach: ``cutoff``."""
    return float(model.cutoff)


def build_model(config: Mapping) -> DCMNet:
    """A :class:`DCMNet` from a dict of its fields; ``type`` must be ``"dcmnet"`` if given.

    Unknown keys and bad values raise ``ValueError`` naming the key.
    """
    return build(DCMNetSettings, DCMNet, config)


def model_config(model: DCMNet) -> dict:
    """The JSON-ready configuration that :func:`build_model` turns back into ``model``."""
    return settings_of(DCMNetSettings, model)
