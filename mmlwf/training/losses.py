"""Targets, predictions and losses: energy, forces, dipole, total charge, atomic monopoles, ESP.

Host side (numpy): :func:`prepare_batch` turns a loader batch (a :class:`~mmlwf.batch.GraphBatch`
or a dict of its flat names) into the device batch, with the
energy target ``E - sum of the molecule's element energies`` computed in float64 and only
then cast to float32. Device side (jax): :func:`energy_and_forces` evaluates a model and its
forces ``-dE/dR``; :func:`batch_sums` reduces the errors of a batch to masked sums
(squared and absolute errors and their counts) from which :func:`loss_from_sums` and
:func:`metrics_from_sums` make the loss and MAE/RMSE, per batch or over a whole split.

Models without an energy (DCMNet) need no element energies: ``prepare_batch(batch, None)``
forms no energy target and the energy term drops out. The ESP term compares the model's
``esp (G,)`` (V) with the batch's ``esp`` over the real grid points; when the model also
returns ``esp_loss_weight (G,)`` the loss uses the weighted mean ``sum w dV² / sum w`` (V²)
while the reported MAE/RMSE stay unweighted, in kcal/(mol·e).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..batch import HOST_FIELDS, LONG_INPUTS, MODEL_INPUTS, GraphBatch, Pairs, as_batch
from ..element_energies import reference_table  # noqa: F401  (re-exported: training's element table)
from ..errors import DataError
from ..units import ESP

#: the loss terms, the batch target each needs and the model output it compares with
TERMS = ("energy", "forces", "dipole", "charge", "mono", "esp")
#: regularising loss terms of a model output alone (no target, no metric), by their weight's setting
PENALTIES = {"nh": "nh_weight"}
#: columns of the metrics (name, unit suffix for history.csv)
METRIC_UNITS = {"energy": "eV", "forces": "eV_per_A", "dipole": "eA", "charge": "e", "mono": "e",
                "esp": "kcal_per_mol_e"}
#: the sums whose ``_sse`` the energy term of the loss uses, by ``training.energy_loss``
ENERGY_LOSS_SUMS = {"per_molecule": "energy", "per_sqrt_atom": "energy_sqrt_atom", "per_atom": "energy_atom"}
#: the floor added to a shallow ensemble's energy variance in its NLL (eV^2: heads never agree
#: closer than 1 meV for the loss), which keeps log and division finite when heads coincide
NLL_VAR_FLOOR = 1e-6
#: factor from the canonical unit of a term's errors to its metric unit (V -> kcal/(mol·e))
METRIC_SCALE = {"esp": 1.0 / ESP["kcal/mol/e"]}

#: batch fields moved to the device and their dtypes (the raw energy ``E``, replaced by
#: ``E_target``, and the host-side bookkeeping stay on the host)
_DEVICE_FIELDS = {
    "Z": np.int32, "R": np.float32, "F": np.float32, "atom_graph": np.int32, "atom_mask": bool,
    "graph_mask": bool, "n_atoms": np.int32, "Qtot": np.float32, "D": np.float32, "q": np.float32,
    "grid": np.float32, "esp": np.float32, "grid_graph": np.int32, "grid_mask": bool,
}
#: the model's positional arguments, as named in a batch (:data:`mmlwf.batch.MODEL_INPUTS`)
MODEL_ARGS = MODEL_INPUTS


def reference_energies(batch: Mapping[str, np.ndarray], table: np.ndarray) -> np.ndarray:
    """Per-graph sum of the element energies of the real atoms (float64, 0 for padding)."""
    mask = np.asarray(batch["atom_mask"], bool)
    Z = np.asarray(batch["Z"])[mask]
    e = table[Z]
    if np.isnan(e).any():
        z = int(Z[np.isnan(e)][0])
        graph = int(np.asarray(batch["atom_graph"])[mask][np.isnan(e)][0])
        index = int(batch["index"][graph]) if "index" in batch else None
        raise DataError(f"no reference energy for element Z={z} (it is not in the training statistics)",
                        field="Z", index=index)
    n_graphs = np.asarray(batch["graph_mask"]).shape[0]
    return np.bincount(np.asarray(batch["atom_graph"])[mask], weights=e, minlength=n_graphs)


def prepare_batch(batch: GraphBatch | Mapping[str, np.ndarray], table: np.ndarray | None) -> GraphBatch:
    """The device batch of a loader batch: its arrays in the device dtypes, without the
    host-side fields and ``E``, plus ``E_target (B,)`` (float32; none when ``table`` is None,
    for models without an energy).

    ``E_target = E - sum of element energies`` is formed in float64 before the cast, so the
    large reference energies cancel exactly and only the small remainder is rounded.
    """
    b = as_batch(batch)

    def cast(p: Pairs | None) -> Pairs | None:
        return None if p is None else Pairs(np.asarray(p.dst, np.int32), np.asarray(p.src, np.int32),
                                            np.asarray(p.mask, bool))

    fields = {k: None if getattr(b, k) is None else np.asarray(getattr(b, k), dtype=t)
              for k, t in _DEVICE_FIELDS.items()}
    out = b._replace(pairs=cast(b.pairs), long_pairs=cast(b.long_pairs), E=None, E_target=None,
                     **fields, **dict.fromkeys(HOST_FIELDS))
    if table is None:
        return out
    E = np.asarray(b.E, np.float64)
    with np.errstate(over="ignore"):  # an absurd energy becomes inf here; the NaN guard names it
        E_target = np.where(out.graph_mask, E - reference_energies(b, table), 0.0).astype(np.float32)
    return out._replace(E_target=E_target)


# ----------------------------------------------------------------------------- device side


def model_inputs(batch: GraphBatch | Mapping) -> tuple:
    """The positional model arguments from a (prepared) batch, in the model API's order
    (:data:`MODEL_ARGS`; a missing ``Qtot`` becomes zeros), followed by the long-range pair
    list's (:data:`mmlwf.batch.LONG_INPUTS`) where the batch has one."""
    from ..models.common import batch_inputs

    inputs = batch_inputs(batch)
    return tuple(inputs[k] for k in MODEL_ARGS + LONG_INPUTS if k in inputs)


def energy_and_forces(apply_fn: Callable, params, batch: Mapping) -> dict:
    """The model's outputs plus ``forces = -dE/dR`` (E summed over real graphs).

    ``apply_fn(params, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot)``
    returns a dict with ``energy (B,)`` and optionally ``charges (A,)``, ``dipole (B,3)``.
    """
    import jax
    import jax.numpy as jnp

    args = list(model_inputs(batch))

    def total(R):
        args[1] = R
        out = apply_fn(params, *args)
        return jnp.sum(jnp.where(batch["graph_mask"], out["energy"], 0.0)), out

    (_, out), grad = jax.value_and_grad(total, has_aux=True)(batch["R"])
    out = dict(out)
    out["forces"] = -grad
    return out


def batch_sums(out: Mapping, batch: Mapping, weight=None) -> dict:
    """Masked error sums of one batch: ``<term>_sse``, ``<term>_sae`` and ``<term>_n`` (the
    count each is divided by) for every term the batch and the predictions support, plus
    ``energy_atom_sse``/``energy_atom_sae`` (errors divided by the molecule's atom count),
    ``energy_sqrt_atom_sse``/``_sae`` (divided by its square root) and,
    for a model with a ``nh_penalty (A,)`` output, ``nh_loss_sse``/``nh_loss_n`` (its sum and
    the real atoms: the loss term ``nh``, PhysNet's non-hierarchicality penalty) and, for a model
    with output heads (``energy_members (H, B)``, a shallow ensemble), ``nll_loss_sse``/
    ``nll_loss_n``: the sum over real structures of the energy's Gaussian negative log-likelihood
    ``0.5*(log var + (E_mean - E)^2 / var)`` (``var``: the heads' variance, ``ddof=0``, plus
    :data:`NLL_VAR_FLOOR`; eV) and their count (the loss term ``nll``).

    ``weight (B,)``: each graph's weight (a bootstrap member's draw count,
    :mod:`.bootstrap`); every sum and count is then that of the batch with graph ``b``
    repeated ``weight[b]`` times."""
    import jax
    import jax.numpy as jnp

    gm = batch["graph_mask"].astype(jnp.float32)
    am = batch["atom_mask"].astype(jnp.float32)
    gw = gm if weight is None else gm * weight  # (B,) what each graph's errors count
    aw = am if weight is None else am * gw[batch["atom_graph"]]  # (A,)
    sums = {}

    def add(term, diff, w, prefix=None, per=1.0):
        p = prefix or term
        sums[f"{term}_n"] = per * jnp.sum(w)
        w = w.reshape(w.shape + (1,) * (diff.ndim - w.ndim))  # (A,) -> (A, 1) for (A, 3) errors
        sums[f"{p}_sse"] = jnp.sum(w * diff * diff)
        sums[f"{p}_sae"] = jnp.sum(w * jnp.abs(diff))

    if "energy" in out and "E_target" in batch:
        dE = (out["energy"] - batch["E_target"]) * gm
        add("energy", dE, gw)
        n_atoms = jnp.maximum(batch["n_atoms"], 1).astype(jnp.float32)
        add("energy", dE / n_atoms, gw, "energy_atom")
        add("energy", dE / jnp.sqrt(n_atoms), gw, "energy_sqrt_atom")
        if "energy_members" in out:  # a shallow ensemble's heads (H, B)
            var = jnp.mean((out["energy_members"] - out["energy"]) ** 2, axis=0) + NLL_VAR_FLOOR
            sums["nll_loss_sse"] = jnp.sum(0.5 * (jnp.log(var) + dE * dE / var) * gw)
            sums["nll_loss_n"] = jnp.sum(gw)
    if "F" in batch and "forces" in out:
        add("forces", (out["forces"] - batch["F"]) * am[:, None], aw, per=3.0)
    if "D" in batch and "dipole" in out:
        add("dipole", (out["dipole"] - batch["D"]) * gm[:, None], gw, per=3.0)
    if "charges" in out:
        Q = jax.ops.segment_sum(out["charges"] * am, batch["atom_graph"], num_segments=gm.shape[0])
        add("charge", (Q - batch["Qtot"]) * gm, gw)
    if "charges" in out and "q" in batch:
        add("mono", (out["charges"] - batch["q"]) * am, aw)
    if "nh_penalty" in out:  # PhysNet's non-hierarchicality penalty: its mean over the real atoms
        sums["nh_loss_sse"] = jnp.sum(out["nh_penalty"] * aw)
        sums["nh_loss_n"] = jnp.sum(aw)
    if "esp" in out and "esp" in batch:
        gpm = batch["grid_mask"].astype(jnp.float32) * gm[batch["grid_graph"]]
        pw = gpm * (1.0 if weight is None else weight[batch["grid_graph"]])  # (G,)
        dV = (out["esp"] - batch["esp"]) * gpm
        add("esp", dV, pw)
        if "esp_loss_weight" in out:
            w = out["esp_loss_weight"] * pw
            sums["esp_loss_sse"] = jnp.sum(w * dV * dV)
            sums["esp_loss_n"] = jnp.sum(w)
    return sums


def available_terms(sums: Mapping) -> tuple[str, ...]:
    return tuple(t for t in TERMS if f"{t}_n" in sums)


def loss_from_sums(sums: Mapping, weights: Mapping[str, float], energy_loss: str, xp=np):
    """``sum_t w_t * MSE_t`` over the terms in ``weights`` (numpy or jax.numpy via ``xp``);
    the energy's squared errors as ``energy_loss`` says (:data:`ENERGY_LOSS_SUMS`); a term
    with ``<term>_loss_sse``/``<term>_loss_n`` sums (a weighted ESP) uses those."""
    loss = 0.0
    for term, w in weights.items():
        if f"{term}_loss_sse" in sums:
            sse, n = sums[f"{term}_loss_sse"], sums[f"{term}_loss_n"]
            n = xp.where(n > 0, n, 1.0)  # the weights are positive: n > 0 whenever there are points
        else:
            sse = sums[f"{ENERGY_LOSS_SUMS[energy_loss] if term == 'energy' else term}_sse"]
            n = xp.maximum(sums[f"{term}_n"], 1.0)
        loss = loss + w * sse / n
    return loss


def metrics_from_sums(sums: Mapping, prefix: str) -> dict[str, float]:
    """``{prefix}_{term}_mae_{unit}`` and ``..._rmse_{unit}`` of every term in ``sums``."""
    out = {}
    for term in available_terms(sums):
        n = max(float(sums[f"{term}_n"]), 1.0)
        unit = METRIC_UNITS[term]
        scale = METRIC_SCALE.get(term, 1.0)
        out[f"{prefix}_{term}_mae_{unit}"] = scale * float(sums[f"{term}_sae"]) / n
        out[f"{prefix}_{term}_rmse_{unit}"] = scale * float(np.sqrt(float(sums[f"{term}_sse"]) / n))
    return out


def metric_columns(terms, prefix: str) -> list[str]:
    cols = []
    for term in terms:
        unit = METRIC_UNITS[term]
        cols += [f"{prefix}_{term}_mae_{unit}", f"{prefix}_{term}_rmse_{unit}"]
    return cols
