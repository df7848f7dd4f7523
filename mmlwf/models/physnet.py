"""PhysNet in flax.linen + e3x: energies, forces, charges and dipoles.

The model works on one padded graph batch (:mod:`mmlwf.batch`): atoms of all molecules concatenated,
directed pairs ``src -> dst`` from a neighbour list, and masks for the padding atoms, pairs
and graphs. Each of ``num_iterations`` modules refines the atomic features by a message
pass over the cutoff graph (radial basis times a smooth cutoff; with ``max_degree >= 1`` the
basis also carries spherical harmonics and the features become equivariant), residual
blocks, and an output block whose scalar part gives an atomic energy (and charge)
contribution. Optional physics terms: atomic charges corrected to the molecule's total
charge, the dipole from those charges, a damped Coulomb term between them switched off
smoothly at ``coulomb_cutoff``, and a ZBL repulsion switched off smoothly at ``cutoff``.

The energy returned is relative to the per-element reference energies from ``stats.json``,
which are added outside the model in float64. Forces are the exact negative gradient of the
energy: :func:`energy_and_forces`.

The loader's pair list must reach ``pair_cutoff(model)``: the message passing ignores
pairs beyond ``cutoff`` (their radial functions are 0), but the Coulomb term needs every
pair within ``coulomb_cutoff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp

from ..batch import MODEL_INPUTS, GraphBatch
from ..constants import BOHR, COULOMB_CONSTANT
from ..settings import PhysNetSettings
from .common import (
    batch_inputs,
    cast_inputs,
    centroid_dipole,
    correct_total_charge,
    graph_sums,
    init_params,  # noqa: F401  (the module-level API: physnet.init_params)
    masks,
    total_charge,
    variables,
)
from .pairs import pair_basis
from .settings import build, check, field_defaults, settings_of

#: inputs of :meth:`PhysNet.__call__`, in order, as named in a batch
INPUT_KEYS = MODEL_INPUTS

# ZBL universal screening function: sum_k c_k exp(-d_k r / a)
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)


def _switch(x):
    """PhysNet's polynomial switch: 1 at x <= 0, 0 at x >= 1, C2-smooth in between."""
    x = jnp.clip(x, 0.0, 1.0)
    x3 = x * x * x
    return 1.0 - 6.0 * x3 * x * x + 15.0 * x3 * x - 10.0 * x3


class _Residual(nn.Module):
    """Pre-activation residual block ``x + W2 σ(W1 σ(x))`` (equivariant with e3x layers)."""

    features: int

    @nn.compact
    def __call__(self, x):
        y = e3x.nn.shifted_softplus(x)
        y = e3x.nn.Dense(self.features)(y)
        y = e3x.nn.shifted_softplus(y)
        y = e3x.nn.Dense(self.features)(y)
        return e3x.nn.add(x, y)


_DEFAULTS = field_defaults(PhysNetSettings)  # declared in mmlwf.settings.models


class PhysNet(nn.Module):
    """PhysNet-style message-passing network (invariant for ``max_degree=0``, else equivariant).

    Fields are the model configuration (see :func:`build_model` / :func:`model_config`).
    """

    features: int = _DEFAULTS["features"]
    max_degree: int = _DEFAULTS["max_degree"]
    num_iterations: int = _DEFAULTS["num_iterations"]
    num_basis_functions: int = _DEFAULTS["num_basis_functions"]
    cutoff: float = _DEFAULTS["cutoff"]
    num_residual: int = _DEFAULTS["num_residual"]
    max_atomic_number: int = _DEFAULTS["max_atomic_number"]
    charges: bool = _DEFAULTS["charges"]
    coulomb: bool = _DEFAULTS["coulomb"]
    repulsion: bool = _DEFAULTS["repulsion"]
    coulomb_cutoff: float = _DEFAULTS["coulomb_cutoff"]

    @property
    def pair_cutoff(self) -> float:
        """The cutoff the neighbour list must reach for this model."""
        return pair_cutoff(self)

    @nn.compact
    def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot=None) -> dict:
        _check_fields(self)
        n_atoms = Z.shape[0]
        n_graphs = graph_mask.shape[0]
        Z, R, dst, src, atom_graph, dtype = cast_inputs(Z, R, dst, src, atom_graph)
        gm, am, pm = masks(graph_mask, atom_mask, pair_mask, atom_graph, dst, src, dtype)

        # -- geometry (masked pairs get a constant displacement: no NaN in gradients)
        r, basis = pair_basis(R, dst, src, pm, cutoff=self.cutoff, num_basis_functions=self.num_basis_functions,
                              max_degree=self.max_degree)

        # -- modules
        F = self.features
        n_out = 2 if self.charges else 1
        x = e3x.nn.Embed(num_embeddings=self.max_atomic_number + 1, features=F, name="embed")(Z).astype(dtype)
        out = jnp.zeros((n_atoms, n_out), dtype)
        for t in range(self.num_iterations):
            # interaction: messages from neighbours plus a self term
            a = e3x.nn.shifted_softplus(x)
            msg = e3x.nn.MessagePass(include_pseudotensors=False, max_degree=self.max_degree, name=f"message_{t}")(
                e3x.nn.Dense(F, name=f"neighbour_{t}")(a), basis, dst_idx=dst, src_idx=src, num_segments=n_atoms
            ).astype(dtype)  # e3x's MessagePass returns float64 under jax_enable_x64 whatever its inputs
            v = e3x.nn.add(e3x.nn.Dense(F, name=f"self_{t}")(a), msg)
            for k in range(self.num_residual):
                v = _Residual(F, name=f"interaction_residual_{t}_{k}")(v)
            v = e3x.nn.shifted_softplus(v)
            gate = self.param(f"gate_{t}", nn.initializers.ones, (F,))
            x = e3x.nn.add(gate * x, e3x.nn.Dense(F, name=f"update_{t}")(v))
            for k in range(self.num_residual):
                x = _Residual(F, name=f"atomic_residual_{t}_{k}")(x)
            # output: from the scalar (invariant) channel only
            o = x[:, :1, :1, :]
            for k in range(self.num_residual):
                o = _Residual(F, name=f"output_residual_{t}_{k}")(o)
            o = e3x.nn.shifted_softplus(o)
            o = e3x.nn.Dense(n_out, kernel_init=nn.initializers.zeros, name=f"output_{t}")(o)
            out = out + o[:, 0, 0, :]

        # per-element scale and shift of the atomic energies (start: 1 and 0)
        e_scale = self.param("energy_scale", nn.initializers.ones, (self.max_atomic_number + 1,))
        e_shift = self.param("energy_shift", nn.initializers.zeros, (self.max_atomic_number + 1,))
        atomic = (out[:, 0] * e_scale[Z] + e_shift[Z]) * am

        results: dict[str, Any] = {}
        n_real = graph_sums(am, atom_graph, n_graphs)
        if self.charges:
            q_shift = self.param("charge_shift", nn.initializers.zeros, (self.max_atomic_number + 1,))
            q = (out[:, 1] + q_shift[Z]) * am
            q = correct_total_charge(q, total_charge(Qtot, n_graphs, dtype), atom_graph, am, gm, n_real)
            results["charges"] = q
            results["dipole"] = centroid_dipole(q, R, R, atom_graph, am, gm, n_real)
            if self.coulomb:
                atomic = atomic + _coulomb_atomic(q, r, pm, dst, src, n_atoms, self.cutoff, self.coulomb_cutoff)
        if self.repulsion:
            atomic = atomic + _zbl_atomic(Z, r, pm, dst, src, n_atoms, self.cutoff)

        results["atomic_energies"] = atomic
        results["energy"] = graph_sums(atomic, atom_graph, n_graphs) * gm
        return results


def _coulomb_atomic(q, r, pm, dst, src, n_atoms, cutoff, coulomb_cutoff):
    """Per-atom share of the damped, shifted-force Coulomb energy (PhysNet eq. 12).

    ``chi(r) = s(r) / sqrt(r^2 + 1) + (1 - s(r)) (1/r + r/rc^2 - 2/rc)`` with ``s`` switching
    from the damped to the bare form between 0 and ``cutoff/2``; value and slope are 0 at
    ``rc = coulomb_cutoff``. Each directed pair carries half of the pair energy.
    """
    rc = coulomb_cutoff
    s = _switch(2.0 * r / cutoff)
    damped = 1.0 / jnp.sqrt(r * r + 1.0)
    bare = 1.0 / r + r / (rc * rc) - 2.0 / rc
    chi = jnp.where(r < rc, s * damped + (1.0 - s) * bare, 0.0)
    e_pair = 0.5 * COULOMB_CONSTANT * q[dst] * q[src] * chi * pm
    return jax.ops.segment_sum(e_pair, dst, num_segments=n_atoms)


def _zbl_atomic(Z, r, pm, dst, src, n_atoms, cutoff):
    """Per-atom share of a ZBL universal repulsion, smoothly switched off at ``cutoff``."""
    zd = Z[dst].astype(r.dtype)
    zs = Z[src].astype(r.dtype)
    a = 0.8854 * BOHR / (zd**0.23 + zs**0.23 + (zd == 0) + (zs == 0))  # padding pairs (Z=0): a stays finite
    x = r / a
    phi = sum(c * jnp.exp(-d * x) for c, d in zip(_ZBL_C, _ZBL_D))
    e_pair = 0.5 * COULOMB_CONSTANT * zd * zs / r * phi * e3x.nn.smooth_cutoff(r, cutoff=cutoff) * pm
    return jax.ops.segment_sum(e_pair, dst, num_segments=n_atoms)


# -- forces


def energy_and_forces(model: PhysNet, params, batch: GraphBatch | Mapping) -> dict:
    """Energies ``(B,)``, forces ``(A,3)`` = -dE/dR (0 on padding atoms), atomic energies
    ``(A,)``, and charges ``(A,)`` / dipoles ``(B,3)`` when the model predicts them, with one
    ``jax.value_and_grad`` w.r.t. the positions (of the sum of the real graphs' energies).

    Jit-compatible: ``jax.jit(lambda p, b: energy_and_forces(model, p, b))``.
    """
    inputs = batch_inputs(batch)
    variables_ = variables(params)
    graph_mask = inputs["graph_mask"]
    atom_mask = inputs["atom_mask"]

    def total_energy(R):
        out = model.apply(variables_, **{**inputs, "R": R})
        return jnp.sum(jnp.where(graph_mask, out["energy"], 0.0)), out

    (_, out), grad = jax.value_and_grad(total_energy, has_aux=True)(inputs["R"])
    result = {"energy": out["energy"], "forces": jnp.where(atom_mask[:, None], -grad, 0.0)}
    for key in ("atomic_energies", "charges", "dipole"):
        if key in out:
            result[key] = out[key]
    return result


# -- configuration

def _check_fields(m) -> None:
    """Raise ValueError on a configuration the model cannot run."""
    check(PhysNetSettings, m)


def pair_cutoff(model: PhysNet) -> float:
    """How far the neighbour list must reach: ``coulomb_cutoff`` with Coulomb, else ``cutoff``."""
    if model.coulomb:
        return float(max(model.cutoff, model.coulomb_cutoff))
    return float(model.cutoff)


def build_model(config: Mapping) -> PhysNet:
    """A :class:`PhysNet` from a dict of its fields; ``type`` may be ``"physnet"``.

    Unknown keys and bad values raise ``ValueError`` naming the key.
    """
    return build(PhysNetSettings, PhysNet, config)


def model_config(model: PhysNet) -> dict:
    """The JSON-ready configuration that :func:`build_model` turns back into ``model``."""
    return settings_of(PhysNetSettings, model)
