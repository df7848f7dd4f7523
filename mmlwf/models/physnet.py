"""PhysNet (Unke & Meuwly, JCTC 15, 3678 (2019)) in flax.linen + e3x: energies, forces,
charges and dipoles.

The model works on one padded graph batch (:mod:`mmlwf.batch`): atoms of all molecules concatenated,
directed pairs ``src -> dst`` from a neighbour list, and masks for the padding atoms, pairs
and graphs. Each of ``num_iterations`` modules refines the atomic features by a message
pass over the cutoff graph (radial basis times a smooth cutoff; with ``max_degree >= 1`` the
basis also carries spherical harmonics and the features become equivariant), residual
blocks, and an output block whose scalar part gives an atomic energy (and charge)
contribution. Physics terms (:mod:`mmlwf.physics`): atomic charges corrected to the
molecule's total charge (optionally with a per-element scale), the dipole from those
charges, PhysNet's shielded Coulomb energy between them, D3(BJ) dispersion with trained
damping parameters, and a short-range ZBL repulsion. ``charges``, ``coulomb`` and
``dispersion`` may be ``"auto"`` in a config: :func:`resolve_settings` decides them from the
training data when training starts; a model built without data (:func:`build_model`) has
an ``"auto"`` term off. The output ``nh_penalty (A,)`` is each atom's share of PhysNet's
non-hierarchicality penalty (a loss term, :mod:`mmlwf.training.losses`).

Two pair lists: message passing uses the short one (``pair_cutoff``, the cutoff); Coulomb
and dispersion use the long one (``long_dst``/``long_src``/``long_pair_mask``, all pairs
within ``long_pair_cutoff``), falling back to the short one when a batch has none.

The energy returned is relative to the per-element reference energies from ``stats.json``,
which are added outside the model in float64; a new training run starts the per-element
energy shift and scale from the training statistics (:func:`init_from_stats`). Forces are the exact negative gradient of the
energy: :func:`energy_and_forces`. With ``output_heads`` H > 1 (a shallow ensemble, set from the
``ensemble`` section) the output layers give H sets of atomic outputs and the model returns
their mean with each head's values beside it (:mod:`.heads`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..batch import MODEL_INPUTS, GraphBatch
from ..physics.coulomb import coulomb_atomic_energies
from ..physics.zbl import zbl_atomic_energies
from ..settings import PhysNetSettings
from ..settings.models import DEFAULT_NUM_BASIS
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
from .heads import head_mean, output_kernel_init
from .pairs import pair_basis, pair_distances
from .settings import build, check, field_defaults, settings_of

#: inputs of :meth:`PhysNet.__call__`, in order, as named in a batch
INPUT_KEYS = MODEL_INPUTS
#: the physics switches that may be "auto" in a config (off in a module built without data)
SWITCHES = ("charges", "coulomb", "dispersion")
#: PhysNet's guard in the non-hierarchicality ratio
_NH_EPS = 1e-7


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


#: settings whose default changed: their value in a ``model.json`` (or export) written before the
#: setting existed (:meth:`~mmlwf.models.registry.ModelKind.stored_config`); such a record lacks the key
STORED_DEFAULTS = {"basis": "bernstein"}

_DEFAULTS = {k: (False if v == "auto" else v)  # declared in mmlwf.settings.models; "auto" is off without data
             for k, v in field_defaults(PhysNetSettings).items()}


class PhysNet(nn.Module):
    """PhysNet message-passing network (invariant for ``max_degree=0``, else equivariant).

    Fields are the model configuration (see :func:`build_model` / :func:`model_config`).
    """

    features: int = _DEFAULTS["features"]
    max_degree: int = _DEFAULTS["max_degree"]
    num_iterations: int = _DEFAULTS["num_iterations"]
    basis: str = _DEFAULTS["basis"]
    num_basis_functions: int | None = _DEFAULTS["num_basis_functions"]
    cutoff: float = _DEFAULTS["cutoff"]
    num_residual: int = _DEFAULTS["num_residual"]
    max_atomic_number: int = _DEFAULTS["max_atomic_number"]
    charges: bool = _DEFAULTS["charges"]
    charge_scale: bool = _DEFAULTS["charge_scale"]
    coulomb: bool = _DEFAULTS["coulomb"]
    coulomb_cutoff: float | None = _DEFAULTS["coulomb_cutoff"]
    dispersion: bool = _DEFAULTS["dispersion"]
    dispersion_functional: str = _DEFAULTS["dispersion_functional"]
    repulsion: bool = _DEFAULTS["repulsion"]
    output_heads: int = _DEFAULTS["output_heads"]

    @property
    def pair_cutoff(self) -> float:
        """The cutoff the neighbour list must reach for this model."""
        return pair_cutoff(self)

    @nn.compact
    def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot=None,
                 long_dst=None, long_src=None, long_pair_mask=None) -> dict:
        _check_fields(self)
        n_atoms = Z.shape[0]
        n_graphs = graph_mask.shape[0]
        Z, R, dst, src, atom_graph, dtype = cast_inputs(Z, R, dst, src, atom_graph)
        gm, am, pm = masks(graph_mask, atom_mask, pair_mask, atom_graph, dst, src, dtype)

        # -- geometry (masked pairs get a constant displacement: no NaN in gradients)
        n_basis = self.num_basis_functions or DEFAULT_NUM_BASIS[self.basis]
        r, basis = pair_basis(R, dst, src, pm, cutoff=self.cutoff, num_basis_functions=n_basis,
                              max_degree=self.max_degree, basis=self.basis)

        # -- modules (H > 1 output heads: the output layers give n_out values per head, :mod:`.heads`)
        F = self.features
        H = self.output_heads
        n_out = 2 if self.charges else 1
        x = e3x.nn.Embed(num_embeddings=self.max_atomic_number + 1, features=F, name="embed")(Z).astype(dtype)
        out = jnp.zeros((n_atoms, n_out * H), dtype)
        nh = jnp.zeros(n_atoms, dtype)  # non-hierarchicality: sum over modules t > 0 of mean_k o_tk^2 / (o_tk^2 + o_t-1,k^2)
        last2 = None
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
            o = e3x.nn.Dense(n_out * H, kernel_init=output_kernel_init(H), name=f"output_{t}")(o)[:, 0, 0, :]
            out = out + o
            o2 = o * o
            if last2 is not None:
                nh = nh + jnp.mean(o2 / (o2 + last2 + _NH_EPS), axis=-1)
            last2 = o2

        # heads: (A, H*n_out) -> (H, A, n_out); the terms below map over the leading head axis
        each = (lambda f: f) if H == 1 else jax.vmap
        if H > 1:
            out = out.reshape(n_atoms, H, n_out).swapaxes(0, 1)

        # per-element scale and shift of the atomic energies (1 and 0 here; a fresh training run sets
        # them from the training statistics: init_from_stats)
        e_scale = self.param("energy_scale", nn.initializers.ones, (self.max_atomic_number + 1,))
        e_shift = self.param("energy_shift", nn.initializers.zeros, (self.max_atomic_number + 1,))
        atomic = (out[..., 0] * e_scale[Z] + e_shift[Z]) * am

        # -- the long pair list of Coulomb and dispersion (the short one when the batch has none)
        if self.coulomb or self.dispersion:
            if long_dst is None:
                l_dst, l_src, l_w, l_r = dst, src, pm, r
            else:
                l_dst, l_src = long_dst.astype(jnp.int32), long_src.astype(jnp.int32)
                l_w = long_pair_mask.astype(dtype) * am[l_dst] * am[l_src]
                l_r, _ = pair_distances(R, l_dst, l_src, l_w)

        results: dict[str, Any] = {}
        n_real = graph_sums(am, atom_graph, n_graphs)
        if self.charges:
            q = out[..., 1]
            if self.charge_scale:
                q = q * self.param("charge_scale", nn.initializers.ones, (self.max_atomic_number + 1,))[Z]
            q = (q + self.param("charge_shift", nn.initializers.zeros, (self.max_atomic_number + 1,))[Z]) * am
            Q = total_charge(Qtot, n_graphs, dtype)
            q = each(lambda q: correct_total_charge(q, Q, atom_graph, am, gm, n_real))(q)
            results["charges"] = q
            results["dipole"] = each(lambda q: centroid_dipole(q, R, R, atom_graph, am, gm, n_real))(q)
            if self.coulomb:
                atomic = atomic + each(lambda q: coulomb_atomic_energies(
                    q, l_r, l_dst, l_src, l_w, n_atoms, sr_cut=self.cutoff, lr_cut=self.coulomb_cutoff))(q)
        if self.dispersion:
            from ..physics.d3 import D3Dispersion  # helper module of its own (contract 3)

            atomic = atomic + D3Dispersion(self.dispersion_functional, name="dispersion")(
                Z, l_r, l_dst, l_src, l_w, n_atoms).astype(dtype) * am
        if self.repulsion:
            atomic = atomic + zbl_atomic_energies(Z, r, dst, src, pm, n_atoms)

        results["atomic_energies"] = atomic
        results["energy"] = each(lambda a: graph_sums(a, atom_graph, n_graphs))(atomic) * gm
        results["nh_penalty"] = nh * am
        return results if H == 1 else head_mean(results)


# -- forces


def energy_and_forces(model: PhysNet, params, batch: GraphBatch | Mapping) -> dict:
    """Energies ``(B,)``, forces ``(A,3)`` = -dE/dR (0 on padding atoms), atomic energies
    ``(A,)``, the non-hierarchicality penalty ``nh_penalty (A,)``, and charges ``(A,)`` /
    dipoles ``(B,3)`` when the model predicts them, with one
    ``jax.value_and_grad`` w.r.t. the positions (of the sum of the real graphs' energies). With
    output heads: the heads' mean energy and its forces, and ``energy_members (H,B)``.

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
    for key in ("atomic_energies", "charges", "dipole", "nh_penalty", "energy_members"):
        if key in out:  # energy_members (H, B): a model with output heads (the NLL of a shallow ensemble)
            result[key] = out[key]
    return result


# -- configuration

def _check_fields(m) -> None:
    """Raise ValueError on a configuration the model cannot run."""
    check(PhysNetSettings, m)


def pair_cutoff(model: PhysNet) -> float:
    """How far the message-passing neighbour list must reach: ``cutoff``."""
    return float(model.cutoff)


def long_pair_cutoff(model: PhysNet) -> float | None:
    """How far the long pair list of Coulomb and dispersion must reach: None without either,
    ``coulomb_cutoff`` when set, else ``math.inf`` (every pair of a molecule)."""
    if not (model.coulomb or model.dispersion):
        return None
    return math.inf if model.coulomb_cutoff is None else float(model.coulomb_cutoff)


def resolve_settings(config: Mapping, facts: Mapping | None = None) -> tuple[dict, str]:
    """``(config, note)``: ``config`` (a ``model:`` section) with ``charges``, ``coulomb`` and
    ``dispersion`` as booleans, and a line saying what was decided and why.

    ``"auto"`` (the default) resolves from ``facts`` about the training data (None: none):
    charges on when ``facts["dipoles"]`` or ``facts["atomic_charges"]`` (or when ``coulomb``
    is set true); Coulomb on when the charges are; dispersion on when
    ``facts["includes_dispersion"]`` (every training dataset's reference includes dispersion).
    ConfigError for a bad config.
    """
    cfg = dict(config)
    s = SimpleNamespace(**build(PhysNetSettings, dict, cfg))  # the checked fields (ConfigError naming a bad key)
    facts = dict(facts or {})
    why_q = ("data have dipoles" if facts.get("dipoles") else "data have atomic charges"
             if facts.get("atomic_charges") else "data have neither dipoles nor atomic charges")
    charges = s.charges if s.charges != "auto" else bool(facts.get("dipoles") or facts.get("atomic_charges")
                                                          or s.coulomb is True)
    coulomb = s.coulomb if s.coulomb != "auto" else charges
    dispersion = s.dispersion if s.dispersion != "auto" else bool(facts.get("includes_dispersion"))
    onoff = {True: "on", False: "off"}
    why = {"charges": "set" if s.charges != "auto" else "needed by Coulomb" if s.coulomb is True else why_q,
           "coulomb": (why_q if s.charges == "auto" else "with the charges") if s.coulomb == "auto" else "set",
           "dispersion": ("set" if s.dispersion != "auto" else "every dataset includes dispersion" if dispersion
                          else "dataset does not include dispersion")}
    if charges == coulomb and why["charges"] == why["coulomb"]:
        head = f"charges+Coulomb {onoff[charges]} ({why['charges']})"
    else:
        head = f"charges {onoff[charges]} ({why['charges']}), Coulomb {onoff[coulomb]} ({why['coulomb']})"
    note = f"physics: {head}, D3 {onoff[dispersion]} ({why['dispersion']})"
    if dispersion and facts.get("elements"):
        from ..physics.d3_tables import d3_tables

        beyond = [z for z in facts["elements"] if z > d3_tables().max_z]
        if beyond:
            raise ConfigError(f"model.dispersion: D3 has no reference data for Z = {beyond[0]} "
                              f"(it covers Z 1-{d3_tables().max_z}); set dispersion: false")
    return {**cfg, "charges": charges, "coulomb": coulomb, "dispersion": dispersion}, note


def init_from_stats(model: PhysNet, variables: Mapping, stats: Mapping) -> tuple[dict, str]:
    """``(variables, note)``: fresh ``variables`` with the per-element energy shift set to the
    mean and the scale to the standard deviation of the training split's energy residual per
    atom (``stats.json``'s ``energy_residual_per_atom``, eV), as the original PhysNet does
    (``EperA_mean``/``EperA_stdev``), so that a fresh model starts at the data's mean energy;
    statistics without energies (ESP only) leave them at 0 and 1, a zero spread leaves the
    scale at 1. The same values for every element: the element references already carry what
    differs between elements. (MACE/apax's scale, the force RMS, did worse on rMD17 ethanol
    and better on aspirin: docs/architecture.md §7.)"""
    resid = stats.get("energy_residual_per_atom") or {}
    shift, spread = resid.get("mean"), resid.get("std")
    if shift is None or not math.isfinite(float(shift)):
        return dict(variables), "energy shift/scale: 0/1 (the training statistics have no energies)"
    params = dict(variables["params"])
    params["energy_shift"] = jnp.full_like(params["energy_shift"], float(shift))
    scale = "1 (no spread)"
    if spread is not None and math.isfinite(float(spread)) and float(spread) > 0:
        params["energy_scale"] = jnp.full_like(params["energy_scale"], float(spread))
        scale = f"{float(spread):.6g} eV"
    note = (f"energy shift/scale from the training statistics: shift {float(shift):.6g} eV, scale {scale} "
            "(mean and std of the energy residual per atom)")
    return {**variables, "params": params}, note


def build_model(config: Mapping) -> PhysNet:
    """A :class:`PhysNet` from a dict of its fields; ``type`` may be ``"physnet"``; a physics
    switch left ``"auto"`` (or absent) is off (no training data to decide it:
    :func:`resolve_settings`).

    Unknown keys and bad values raise ``ValueError`` naming the key.
    """
    cfg = dict(config)
    for key in SWITCHES:
        if cfg.get(key, "auto") == "auto":
            cfg[key] = key == "charges" and cfg.get("coulomb") is True
    model = build(PhysNetSettings, PhysNet, cfg)
    if model.dispersion:
        try:
            from ..physics.d3 import damping_parameters
        except ImportError:  # the dispersion module is not installed: the model fails when called
            return model
        damping_parameters(model.dispersion_functional)  # ConfigError naming an unknown functional
    return model


def model_config(model: PhysNet) -> dict:
    """The JSON-ready configuration that :func:`build_model` turns back into ``model``;
    ``output_heads`` only for a shallow ensemble's model (H > 1), so that the record of every
    other model stays as it was before heads existed (absent means 1)."""
    config = settings_of(PhysNetSettings, model)
    if config["output_heads"] == 1:
        del config["output_heads"]
    return config
