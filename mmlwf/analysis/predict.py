"""Predictions of a trained run on a packed dataset, in canonical units (eV, eV/Å, e, e·Å, V).

PhysNet (:func:`predict`): the model's energy is relative to the per-element reference
energies of ``model.json``; they are added back here in float64. DCMNet
(:func:`predict_esp`): the ESP at the grid points and the distributed charges. Loading a
run (:class:`TrainedModel`, :func:`load_run`) lives in :mod:`mmlwf.inference` (re-exported here).

For an ensemble (:mod:`mmlwf.ensemble`) every prediction is the member mean and the raw
(unscaled) spreads over the members come beside it: ``E_spread (k,)`` eV, ``F_spread (A,)``
eV/Å per atom, ``D_spread (k,)`` e·Å, ``q_spread (A,)`` e, and for DCMNet ``esp_spread (G,)`` V.
"""

from __future__ import annotations

import os

import numpy as np

from ..batching import BatchLoader
from ..inference import TrainedModel, jitted_forward, load_run  # noqa: F401 (re-exported)
from ..packed import PackedDataset

__all__ = ["TrainedModel", "energy_force_metrics", "load_run", "predict", "predict_esp"]


def predict(run: TrainedModel, data: PackedDataset | str | os.PathLike, indices=None, *, batch_size: int = 32) -> dict:
    """Per-structure and per-atom predictions for ``indices`` (default: all), in index order.

    Returns ``index (k,)``, ``n_atoms (k,)``, ``E_ref``/``E_pred (k,)`` eV, ``Z`` and
    ``offsets (k+1,)`` of the atoms (structure ``index[j]`` at rows ``offsets[j]:offsets[j+1]``),
    and where the dataset has forces ``F_ref``/``F_pred (sum n_atoms, 3)`` eV/Å. A model
    with charges adds ``q_pred (sum n_atoms,)`` e, ``Q_pred (k,)`` (their sum per structure)
    with ``Q_ref`` (the dataset's ``Qtot``, 0 when absent), ``D_pred (k, 3)`` e·Å and, where
    the dataset has them, ``D_ref (k, 3)`` and atomic ``q_ref``.
    """
    import jax

    from ..batch import device_fields
    from ..training.losses import reference_energies

    ds = data if isinstance(data, PackedDataset) else PackedDataset(data)
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, np.int64)
    loader = BatchLoader(ds, idx, batch_size=batch_size, cutoff=run.pair_cutoff, long_cutoff=run.long_pair_cutoff,
                         shuffle=False)
    step = run.forward
    has_F = "F" in ds.fields
    mol_out: dict[str, dict[int, np.ndarray]] = {"E": {}, "D": {}, "E_spread": {}, "D_spread": {}}  # per structure
    atom_out: dict[str, dict[int, np.ndarray]] = {"F": {}, "q": {}, "F_spread": {}, "q_spread": {}}  # per atom
    for batch in loader.epoch(0):
        out = jax.device_get(step(run.params, device_fields(batch)))
        gm, am, graph = batch.graph_mask, batch.atom_mask, batch.atom_graph
        E = np.asarray(out["energy"], np.float64) + reference_energies(batch, run.reference)
        for k in np.flatnonzero(gm):
            mol = int(batch.index[k])
            mol_out["E"][mol] = E[k]
            atoms = am & (graph == k)
            if has_F:
                atom_out["F"][mol] = np.asarray(out["forces"])[atoms]
            if "dipole" in out:
                mol_out["D"][mol] = np.asarray(out["dipole"])[k]
            if "charges" in out:
                atom_out["q"][mol] = np.asarray(out["charges"])[atoms]
            for name, key in (("energy", "E_spread"), ("dipole", "D_spread")):
                if f"{name}_spread" in out:
                    mol_out[key][mol] = np.float64(out[f"{name}_spread"][k])
            for name, key in (("forces", "F_spread"), ("charges", "q_spread")):
                if f"{name}_spread" in out and (name != "forces" or has_F):
                    atom_out[key][mol] = np.asarray(out[f"{name}_spread"])[atoms]
    order = idx
    result = {
        "index": order,
        "n_atoms": np.asarray(ds.n_atoms[order]),
        "E_ref": np.asarray(ds.arrays["E"][order], np.float64),
        "E_pred": np.array([mol_out["E"][int(i)] for i in order]),
    }
    wanted = ("Z",) + tuple(f for f in ("F", "q", "D", "Qtot") if f in ds.fields)
    g = ds.gather(order, fields=wanted)
    result["Z"], result["offsets"] = g["Z"], g["offsets"]
    if has_F:
        result["F_ref"] = np.asarray(g["F"], np.float64)
        result["F_pred"] = _stack(atom_out["F"], order, (0, 3))
    if atom_out["q"]:
        result["q_pred"] = _stack(atom_out["q"], order, (0,))
        result["Q_pred"] = np.array([np.sum(atom_out["q"][int(i)], dtype=np.float64) for i in order])
        result["Q_ref"] = np.asarray(g["Qtot"], np.float64) if "Qtot" in g else np.zeros(len(order))
        if "q" in g:
            result["q_ref"] = np.asarray(g["q"], np.float64)
    if mol_out["D"]:
        result["D_pred"] = np.array([mol_out["D"][int(i)] for i in order], np.float64).reshape(-1, 3)
        if "D" in g:
            result["D_ref"] = np.asarray(g["D"], np.float64)
    for key in ("E_spread", "D_spread"):
        if mol_out[key]:
            result[key] = np.array([mol_out[key][int(i)] for i in order], np.float64)
    for key in ("F_spread", "q_spread"):
        if atom_out[key]:
            result[key] = _stack(atom_out[key], order, (0,))
    return result


def predict_esp(run: TrainedModel, data: PackedDataset | str | os.PathLike, indices=None, *,
                batch_size: int = 32) -> dict:
    """DCMNet predictions for ``indices`` (default: all), in index order, on an ESP dataset.

    Returns ``index``, ``n_atoms``, ``Z``, ``R (A,3)`` Å and ``offsets`` of the atoms;
    ``grid (G,3)`` Å, ``grid_offsets (k+1,)``, ``esp_ref``/``esp_pred (G,)`` V; per atom
    ``dcm_charges (A, n_dcm)`` e, ``dcm_positions (A, n_dcm, 3)`` Å and ``q_pred (A,)`` (their
    sum); ``Q_pred``/``Q_ref (k,)`` e, ``D_pred (k,3)`` e·Å, and ``D_ref``/``q_ref`` where the
    dataset has them.
    """
    import jax

    from ..batch import device_fields

    ds = data if isinstance(data, PackedDataset) else PackedDataset(data)
    missing = [f for f in ("grid", "esp") if f not in ds.fields]
    if missing:
        from ..errors import DataError

        raise DataError("a DCMNet run needs an ESP dataset", path=ds.path, field=missing[0])
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, np.int64)
    loader = BatchLoader(ds, idx, batch_size=batch_size, cutoff=run.pair_cutoff, long_cutoff=run.long_pair_cutoff,
                         shuffle=False)
    step = run.forward
    per_atom: dict[str, dict[int, np.ndarray]] = {"dcm_charges": {}, "dcm_positions": {}, "charges": {}}
    esp: dict[int, np.ndarray] = {}
    esp_spread: dict[int, np.ndarray] = {}
    dipole: dict[int, np.ndarray] = {}
    for batch in loader.epoch(0):
        out = jax.device_get(step(run.params, device_fields(batch)))
        gm, am, graph = batch.graph_mask, batch.atom_mask, batch.atom_graph
        ggraph, gmask = batch.grid_graph, batch.grid_mask
        for k in np.flatnonzero(gm):
            mol = int(batch.index[k])
            atoms = am & (graph == k)
            for key, store in per_atom.items():
                store[mol] = np.asarray(out[key])[atoms]
            esp[mol] = np.asarray(out["esp"])[gmask & (ggraph == k)]
            if "esp_spread" in out:
                esp_spread[mol] = np.asarray(out["esp_spread"])[gmask & (ggraph == k)]
            dipole[mol] = np.asarray(out["dipole"])[k]
    g = ds.gather(idx, fields=("Z", "R", "grid", "esp") + tuple(f for f in ("q", "D", "Qtot") if f in ds.fields))
    result = {
        "index": idx, "n_atoms": np.asarray(ds.n_atoms[idx]), "Z": g["Z"], "R": np.asarray(g["R"], np.float64),
        "offsets": g["offsets"], "grid": np.asarray(g["grid"], np.float64), "grid_offsets": g["grid_offsets"],
        "esp_ref": np.asarray(g["esp"], np.float64), "esp_pred": _stack(esp, idx, (0,)),
        "dcm_charges": _stack(per_atom["dcm_charges"], idx, (0, run.model.n_dcm)),
        "dcm_positions": _stack(per_atom["dcm_positions"], idx, (0, run.model.n_dcm, 3)),
        "q_pred": _stack(per_atom["charges"], idx, (0,)),
        "Q_pred": np.array([np.sum(per_atom["charges"][int(i)], dtype=np.float64) for i in idx]),
        "Q_ref": np.asarray(g["Qtot"], np.float64) if "Qtot" in g else np.zeros(len(idx)),
        "D_pred": np.array([dipole[int(i)] for i in idx], np.float64).reshape(-1, 3),
    }
    if "D" in g:
        result["D_ref"] = np.asarray(g["D"], np.float64)
    if "q" in g:
        result["q_ref"] = np.asarray(g["q"], np.float64)
    if esp_spread:
        result["esp_spread"] = _stack(esp_spread, idx, (0,))
    return result


def _stack(parts: dict[int, np.ndarray], order: np.ndarray, empty_shape: tuple) -> np.ndarray:
    """Per-structure arrays concatenated in ``order`` (float64)."""
    if len(order) == 0:
        return np.zeros(empty_shape)
    return np.concatenate([parts[int(i)] for i in order]).astype(np.float64)


def energy_force_metrics(pred: dict) -> dict:
    """Energy MAE/RMSE per molecule and per atom (eV), force MAE/RMSE per component (eV/Å)."""
    dE = pred["E_pred"] - pred["E_ref"]
    out = {
        "energy_mae_eV": float(np.mean(np.abs(dE))),
        "energy_rmse_eV": float(np.sqrt(np.mean(dE**2))),
        "energy_per_atom_mae_eV": float(np.mean(np.abs(dE / pred["n_atoms"]))),
        "n_structures": int(dE.shape[0]),
    }
    if "F_pred" in pred:
        dF = pred["F_pred"] - pred["F_ref"]
        out["forces_mae_eV_per_A"] = float(np.mean(np.abs(dF)))
        out["forces_rmse_eV_per_A"] = float(np.sqrt(np.mean(dF**2)))
    return out
