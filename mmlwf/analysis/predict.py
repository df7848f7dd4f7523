"""Predictions of a trained run on a packed dataset, in canonical units (eV, eV/Å).

The model's energy is relative to the per-element reference energies of ``model.json``;
they are added back here in float64.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..batching import BatchLoader
from ..packed import PackedDataset


@dataclass
class TrainedModel:
    """A rebuilt model with its parameters and reference energies."""

    model: Any
    params: Any
    info: dict
    reference: np.ndarray  # (119,) eV by atomic number
    run_dir: Path

    @property
    def pair_cutoff(self) -> float:
        from ..models.physnet import pair_cutoff

        return pair_cutoff(self.model)


def load_run(run_dir: str | os.PathLike, which: str = "best") -> TrainedModel:
    """The model of a run directory with the ``best`` (default) or ``latest`` parameters."""
    from ..models.physnet import build_model
    from ..training.checkpoint import load_params
    from ..training.losses import reference_table

    params, info = load_params(run_dir, which)
    model = build_model(info["model"])
    return TrainedModel(model, params, info, reference_table(info["element_energies_by_Z"]), Path(run_dir))


def predict(run: TrainedModel, data: PackedDataset | str | os.PathLike, indices=None, *, batch_size: int = 32) -> dict:
    """Per-structure and per-atom predictions for ``indices`` (default: all), in index order.

    Returns ``index (k,)``, ``n_atoms (k,)``, ``E_ref``/``E_pred (k,)`` eV, and when the
    dataset has forces ``F_ref``/``F_pred (sum n_atoms, 3)`` eV/Å (atoms of structure
    ``index[j]`` at rows ``offsets[j]:offsets[j+1]``), plus ``Z`` of those atoms.
    """
    import jax

    from ..models.physnet import energy_and_forces
    from ..training.losses import reference_energies

    ds = data if isinstance(data, PackedDataset) else PackedDataset(data)
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, np.int64)
    loader = BatchLoader(ds, idx, batch_size=batch_size, cutoff=run.pair_cutoff, shuffle=False)
    step = jax.jit(functools.partial(energy_and_forces, run.model))
    has_F = "F" in ds.fields
    e_pred, index, parts = {}, [], {}
    for batch in loader.epoch(0):
        out = jax.device_get(step(run.params, batch))
        gm, am = batch["graph_mask"], batch["atom_mask"]
        E = np.asarray(out["energy"], np.float64) + reference_energies(batch, run.reference)
        for k, mol in enumerate(batch["index"][gm]):
            e_pred[int(mol)] = E[k]
        if has_F:
            graph = batch["atom_graph"][am]
            for k, mol in enumerate(batch["index"][gm]):
                parts[int(mol)] = np.asarray(out["forces"])[am][graph == k]
        index.append(batch["index"][gm])
    order = idx
    result = {
        "index": order,
        "n_atoms": np.asarray(ds.n_atoms[order]),
        "E_ref": np.asarray(ds.arrays["E"][order], np.float64),
        "E_pred": np.array([e_pred[int(i)] for i in order]),
    }
    g = ds.gather(order, fields=("Z", "F") if has_F else ("Z",))
    result["Z"], result["offsets"] = g["Z"], g["offsets"]
    if has_F:
        result["F_ref"] = np.asarray(g["F"], np.float64)
        result["F_pred"] = np.concatenate([parts[int(i)] for i in order]).astype(np.float64)
    return result


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
