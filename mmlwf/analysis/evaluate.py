"""Evaluation of a trained run on a subset of a packed dataset: ``mmlwf evaluate``.

:func:`compute_metrics` turns a prediction dict (see :func:`~mmlwf.analysis.predict.predict`)
into error metrics whose names carry their unit (eV, eV/Å, e·Å as ``eA``, e, V and
kcal/(mol·e) for the electrostatic potential); :func:`predictions_table` gives one row per
structure; :func:`evaluate_run` does both for a run directory with the parameters of its
best checkpoint (the EMA weights when the run kept an EMA, as validation used).

Which predictions and metrics a run makes depends on its model kind (``model.json``:
``model.type``; :mod:`mmlwf.models.registry`). An ensemble's predictions are the member means
with their raw spreads beside them (``*_spread`` columns and arrays), and its metrics document
gets a ``calibration`` section (:func:`mmlwf.analysis.uncertainty.uncertainty_metrics`).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_write, save_npz_deterministic
from ..integrity import check_split, verify_dataset
from ..packed import PackedDataset
from ..rundir import ATOMS_FILE, METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, RunDir  # noqa: F401 (re-exported)
from ..units import ESP
from .uncertainty import uncertainty_metrics

#: one volt (eV/e) in kcal/(mol·e)
KCAL_PER_MOL_PER_EV = 1.0 / ESP["kcal/mol/e"]
SUBSETS = ("test", "valid", "train", "all")
#: per-atom arrays kept in the atom predictions file (besides ``Z``, ``offsets``, ``index``)
ATOM_ARRAYS = ("F_ref", "F_pred", "q_ref", "q_pred", "R", "dcm_charges", "dcm_positions", "F_spread", "q_spread")
#: per-grid-point arrays kept there (with ``grid_offsets``)
GRID_ARRAYS = ("grid", "esp_ref", "esp_pred", "esp_spread")
#: per-structure spreads of an ensemble in the table (raw, unscaled): prediction key -> column
SPREAD_COLUMNS = {"E_spread": "E_spread_eV", "D_spread": "D_spread_eA"}


def _mae_rmse(diff: np.ndarray, name: str, unit: str) -> dict[str, float]:
    diff = np.asarray(diff, np.float64)
    if diff.size == 0:
        return {}
    return {f"{name}_mae_{unit}": float(np.mean(np.abs(diff))),
            f"{name}_rmse_{unit}": float(np.sqrt(np.mean(diff * diff)))}


def _norm_errors(diff: np.ndarray, name: str, unit: str) -> dict[str, float]:
    """MAE and RMSE of the length of each error vector ``|pred - ref|`` (rows of ``diff``)."""
    return _mae_rmse(np.linalg.norm(diff, axis=-1), f"{name}_norm", unit)


def compute_metrics(pred: Mapping[str, np.ndarray]) -> dict[str, float | int]:
    """Error metrics of a prediction dict, every name with its unit.

    Energy per structure and per atom (``energy_*_eV``, ``energy_per_atom_*_eV``); forces
    per Cartesian component (``forces_*_eV_per_A``) and of the error vector's length
    (``forces_norm_*_eV_per_A``); dipole per component and norm (``dipole_*_eA``); total
    charge (``charge_*_e``) and atomic charges (monopoles, ``mono_*_e``); ESP over all grid
    points (``esp_*_V`` and ``esp_*_kcal_per_mol_e``). Only what ``pred`` holds is reported.
    """
    n_atoms = np.asarray(pred["n_atoms"], np.float64)
    out: dict[str, float | int] = {"n_structures": int(n_atoms.size), "n_atoms": int(n_atoms.sum())}
    if "E_pred" in pred:
        dE = np.asarray(pred["E_pred"], np.float64) - np.asarray(pred["E_ref"], np.float64)
        out |= _mae_rmse(dE, "energy", "eV")
        out |= _mae_rmse(dE / np.maximum(n_atoms, 1), "energy_per_atom", "eV")
        if dE.size:
            out["energy_max_abs_error_eV"] = float(np.max(np.abs(dE)))
    if "F_pred" in pred:
        dF = np.asarray(pred["F_pred"], np.float64) - np.asarray(pred["F_ref"], np.float64)
        out |= _mae_rmse(dF, "forces", "eV_per_A") | _norm_errors(dF, "forces", "eV_per_A")
        if dF.size:
            out["forces_max_abs_error_eV_per_A"] = float(np.max(np.abs(dF)))
    if "D_pred" in pred and "D_ref" in pred:
        dD = np.asarray(pred["D_pred"], np.float64) - np.asarray(pred["D_ref"], np.float64)
        out |= _mae_rmse(dD, "dipole", "eA") | _norm_errors(dD, "dipole", "eA")
    if "Q_pred" in pred:
        out |= _mae_rmse(np.asarray(pred["Q_pred"]) - np.asarray(pred["Q_ref"]), "charge", "e")
    if "q_pred" in pred and "q_ref" in pred:
        out |= _mae_rmse(np.asarray(pred["q_pred"]) - np.asarray(pred["q_ref"]), "mono", "e")
    if "esp_pred" in pred:
        dV = np.asarray(pred["esp_pred"], np.float64) - np.asarray(pred["esp_ref"], np.float64)
        out |= _mae_rmse(dV, "esp", "V") | _mae_rmse(dV * KCAL_PER_MOL_PER_EV, "esp", "kcal_per_mol_e")
        out["n_grid_points"] = int(dV.size)
    return out


def per_element_metrics(pred: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Force errors per element (``{"H": {"n_atoms", "forces_mae_eV_per_A", ...}}``), in
    order of atomic number; atomic-charge (``mono``) errors too where the data has them."""
    from ase.data import chemical_symbols

    if "F_pred" not in pred and "q_ref" not in pred:
        return {}
    Z = np.asarray(pred["Z"])
    out = {}
    for z in np.unique(Z):
        sel = Z == z
        row: dict[str, float | int] = {"Z": int(z), "n_atoms": int(sel.sum())}
        if "F_pred" in pred:
            dF = np.asarray(pred["F_pred"])[sel] - np.asarray(pred["F_ref"])[sel]
            row |= _mae_rmse(dF, "forces", "eV_per_A") | _norm_errors(dF, "forces", "eV_per_A")
        if "q_pred" in pred and "q_ref" in pred:
            row |= _mae_rmse(np.asarray(pred["q_pred"])[sel] - np.asarray(pred["q_ref"])[sel], "mono", "e")
        out[chemical_symbols[int(z)]] = row
    return out


def _formulas(Z: np.ndarray, offsets: np.ndarray) -> list[str]:
    from ase.formula import Formula

    cache: dict[bytes, str] = {}
    out = []
    for a, b in itertools.pairwise(offsets):
        z = np.sort(Z[a:b])
        key = z.tobytes()
        if key not in cache:
            from ase.data import chemical_symbols

            cache[key] = Formula("".join(chemical_symbols[int(x)] for x in z)).format("hill")
        out.append(cache[key])
    return out


def _owner(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(structure of each row, rows per structure)`` from offsets ``(k+1,)``."""
    counts = np.diff(offsets)
    return np.repeat(np.arange(len(counts)), counts), counts


def predictions_table(pred: Mapping[str, np.ndarray]):
    """One row per structure (:class:`pandas.DataFrame`): ``index``, ``n_atoms``, ``formula``,
    reference, prediction and error of each predicted quantity (units in the column names),
    and the structure's force MAE/RMSE and largest force-error norm. An ensemble's table also
    has the raw spreads: ``E_spread_eV``, ``D_spread_eA``, the largest and the RMS per-atom
    force spread ``F_spread_max_eV_per_A``/``F_spread_rms_eV_per_A`` and ``esp_spread_rms_V``
    (per atom and grid point in the atom predictions file)."""
    import pandas as pd

    offsets = np.asarray(pred["offsets"])
    cols: dict[str, np.ndarray | list] = {
        "index": np.asarray(pred["index"], np.int64),
        "n_atoms": np.asarray(pred["n_atoms"], np.int64),
        "formula": _formulas(np.asarray(pred["Z"]), offsets),
    }
    if "E_pred" in pred:
        E_ref, E_pred = np.asarray(pred["E_ref"], np.float64), np.asarray(pred["E_pred"], np.float64)
        cols |= {"E_ref_eV": E_ref, "E_pred_eV": E_pred, "E_error_eV": E_pred - E_ref,
                 "E_error_per_atom_eV": (E_pred - E_ref) / np.maximum(cols["n_atoms"], 1)}
    if "F_pred" in pred:
        dF = np.asarray(pred["F_pred"], np.float64) - np.asarray(pred["F_ref"], np.float64)
        mol, n = _owner(offsets)
        with np.errstate(invalid="ignore", divide="ignore"):  # a structure without atoms gets NaN
            cols["F_mae_eV_per_A"] = np.bincount(mol, np.abs(dF).sum(axis=1), len(n)) / (3 * n)
            cols["F_rmse_eV_per_A"] = np.sqrt(np.bincount(mol, (dF * dF).sum(axis=1), len(n)) / (3 * n))
        max_norm = np.full(len(n), np.nan)
        np.fmax.at(max_norm, mol, np.linalg.norm(dF, axis=1))
        cols["F_max_norm_error_eV_per_A"] = max_norm
    if "Q_pred" in pred:
        cols |= {"Qtot_ref_e": np.asarray(pred["Q_ref"], np.float64), "Qtot_pred_e": np.asarray(pred["Q_pred"], np.float64)}
    if "D_pred" in pred:
        D_pred = np.asarray(pred["D_pred"], np.float64)
        if "D_ref" in pred:
            D_ref = np.asarray(pred["D_ref"], np.float64)
            cols |= {f"D_ref_{c}_eA": D_ref[:, i] for i, c in enumerate("xyz")}
        cols |= {f"D_pred_{c}_eA": D_pred[:, i] for i, c in enumerate("xyz")}
        if "D_ref" in pred:
            cols["D_error_norm_eA"] = np.linalg.norm(D_pred - D_ref, axis=1)
    if "esp_pred" in pred:
        dV = np.asarray(pred["esp_pred"], np.float64) - np.asarray(pred["esp_ref"], np.float64)
        mol, n = _owner(np.asarray(pred["grid_offsets"]))
        cols["n_grid"] = n
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["esp_mae_V"] = np.bincount(mol, np.abs(dV), len(n)) / n
            cols["esp_rmse_V"] = np.sqrt(np.bincount(mol, dV * dV, len(n)) / n)
        cols["esp_rmse_kcal_per_mol_e"] = cols["esp_rmse_V"] * KCAL_PER_MOL_PER_EV
    cols |= _spread_columns(pred, offsets)
    return pd.DataFrame(cols)


def _spread_columns(pred: Mapping[str, np.ndarray], offsets: np.ndarray) -> dict[str, np.ndarray]:
    """The per-structure spread columns of an ensemble's table (none for a single model)."""
    cols = {col: np.asarray(pred[key], np.float64) for key, col in SPREAD_COLUMNS.items() if key in pred}
    if "F_spread" in pred:
        spread = np.asarray(pred["F_spread"], np.float64)
        mol, n = _owner(offsets)
        largest = np.full(len(n), np.nan)
        np.fmax.at(largest, mol, spread)
        cols["F_spread_max_eV_per_A"] = largest
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["F_spread_rms_eV_per_A"] = np.sqrt(np.bincount(mol, spread * spread, len(n)) / n)
    if "esp_spread" in pred:
        spread = np.asarray(pred["esp_spread"], np.float64)
        mol, n = _owner(np.asarray(pred["grid_offsets"]))
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["esp_spread_rms_V"] = np.sqrt(np.bincount(mol, spread * spread, len(n)) / n)
    return cols


# ----------------------------------------------------------------------------- runs


def model_type(run_dir: str | os.PathLike) -> str:
    """The run's model type from ``model.json`` (the default kind when not recorded)."""
    return RunDir(run_dir).model_type


def subset_indices(split: str | os.PathLike | None, subset: str, n_molecules: int) -> np.ndarray:
    """The structure indices of ``subset`` (``all``: every structure; no split needed)."""
    from ..split import load_split

    if subset not in SUBSETS:
        raise ConfigError(f"subset '{subset}' is unknown (known: {', '.join(SUBSETS)})")
    if subset == "all":
        return np.arange(n_molecules, dtype=np.int64)
    if split is None:
        raise ConfigError(f"subset '{subset}' needs a split file (--split)")
    return load_split(split, n_molecules)[subset]


def checkpoint_epoch(run_dir: str | os.PathLike, which: str = "best") -> int | None:
    """The epoch of the run's ``best``/``latest`` checkpoint (None if it does not say)."""
    from ..training.checkpoint import checkpoint_meta

    meta = checkpoint_meta(run_dir, which)
    epoch = meta.get("epoch")
    return int(epoch) if epoch is not None else None


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike, split: str | os.PathLike | None = None,
                 *, subset: str = "test", which: str = "best", batch_size: int = 32) -> tuple[dict, dict]:
    """``(metrics document, prediction dict)`` of a run's ``which`` checkpoint on ``subset``.

    The document records the run, model type, checkpoint (which, epoch, EMA), dataset,
    split, subset and counts, the overall metrics and the per-element force errors; for an
    ensemble also the calibration of its spreads (``calibration``: raw and scaled).
    """
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    kind = rd.kind
    if not rd.has_checkpoint(which):
        raise DataError(f"no '{which}' checkpoint (has the run trained an epoch?)", path=rd.checkpoints)
    ds = PackedDataset(data)
    digest = verify_dataset(data).digest  # checksums, and a split made from this version of it
    if split is not None and subset != "all":
        check_split(split, digest, data)
    indices = subset_indices(split, subset, len(ds))
    if indices.size == 0:
        raise DataError(f"the '{subset}' subset is empty", path=split, field=subset)
    run = rd.load(which)
    pred, info = kind.predictions(run, ds, indices, batch_size=batch_size), run.info
    doc = {
        "format": "mmlwf-metrics",
        "format_version": 1,
        "run": str(run_dir),
        "experiment": run_dir.resolve().name,
        "model_type": kind.name,
        "checkpoint": {"which": which, "epoch": checkpoint_epoch(run_dir, which), "ema": bool(info.get("ema", False))},
        "dataset": str(data),
        "dataset_digest": digest,
        "split": None if split is None else str(split),
        "subset": subset,
        "units": {"energy": "eV", "forces": "eV/A", "dipole": "e*A", "charge": "e",
                  "esp": "V (also kcal/(mol*e))"},
        "metrics": kind.compute_metrics(pred),
        "per_element": per_element_metrics(pred),
    }
    calibration = uncertainty_metrics(pred, info)
    if calibration is not None:
        doc["calibration"] = calibration
    return doc, pred


def write_metrics(doc: Mapping, path: str | os.PathLike) -> None:
    """Write a metrics document as indented JSON, atomically."""
    with atomic_write(path) as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


def read_metrics(path: str | os.PathLike) -> dict:
    """A metrics document written by :func:`write_metrics`."""
    path = Path(path)
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise DataError("not a metrics file (no 'metrics' mapping)", path=path, field="metrics")
    return doc


def write_predictions(pred: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """The per-structure table as CSV, atomically."""
    table = predictions_table(pred)
    with atomic_write(path) as fh:
        table.to_csv(fh, index=False, float_format="%.10g")


def write_atom_predictions(pred: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """The per-atom arrays (``index``, ``offsets``, ``Z``, forces, charges, DCMNet charge
    positions) and per-grid-point arrays (ESP) as a deterministic ``.npz`` (what the
    parity, per-element and ESP plots need), atomically."""
    keys = ("index", "n_atoms", "offsets", "Z", *ATOM_ARRAYS, "grid_offsets", *GRID_ARRAYS)
    arrays = {k: np.asarray(pred[k]) for k in keys if k in pred}
    save_npz_deterministic(path, arrays)


def read_atom_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays written by :func:`write_atom_predictions`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"unreadable atom predictions ({exc})", path=path) from None
    for key in ("offsets", "Z"):
        if key not in out:
            raise DataError("not an atom predictions file", path=path, field=key)
    n = int(out["offsets"][-1]) if out["offsets"].size else 0
    for key in ATOM_ARRAYS:
        if key in out and out[key].shape[0] != n:
            raise DataError(f"{out[key].shape[0]} rows, the offsets say {n}", path=path, field=key)
    if any(k in out for k in GRID_ARRAYS):
        g = out.get("grid_offsets")
        if g is None:
            raise DataError("grid arrays without grid_offsets", path=path, field="grid_offsets")
        for key in GRID_ARRAYS:
            if key in out and out[key].shape[0] != int(g[-1]):
                raise DataError(f"{out[key].shape[0]} rows, grid_offsets say {int(g[-1])}", path=path, field=key)
    return out


def load_predictions(table: str | os.PathLike, atoms: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """A prediction dict rebuilt from the CSV of :func:`write_predictions` (and the per-atom
    ``.npz`` of :func:`write_atom_predictions`, which must hold the same structures)."""
    import pandas as pd

    table = Path(table)
    try:
        df = pd.read_csv(table)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable predictions table ({' '.join(str(exc).split())})", path=table) from None
    for col in ("index", "n_atoms"):
        if col not in df:
            raise DataError("not a predictions table", path=table, field=col)
    pred: dict[str, np.ndarray] = {"index": df["index"].to_numpy(np.int64), "n_atoms": df["n_atoms"].to_numpy(np.int64)}
    pairs = {"E_ref": "E_ref_eV", "E_pred": "E_pred_eV", "Q_ref": "Qtot_ref_e", "Q_pred": "Qtot_pred_e",
             **SPREAD_COLUMNS}
    for key, col in pairs.items():
        if col in df:
            pred[key] = df[col].to_numpy(np.float64)
    for key in ("D_ref", "D_pred"):
        cols = [f"{key}_{c}_eA" for c in "xyz"]
        if all(c in df for c in cols):
            pred[key] = df[cols].to_numpy(np.float64)
    if atoms is not None:
        arr = read_atom_predictions(atoms)
        if "index" in arr and not np.array_equal(arr["index"], pred["index"]):
            raise DataError(f"its structures differ from those of {table}", path=atoms, field="index")
        pred |= {k: v for k, v in arr.items() if k != "index" and k != "n_atoms"}
    return pred


def run_predictions(run_dir: str | os.PathLike, predictions: str | os.PathLike | None = None,
                    atoms: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
                    split: str | os.PathLike | None = None, subset: str = "test") -> dict[str, np.ndarray]:
    """The prediction dict for a run's plots: from ``predictions`` (+ ``atoms``) when given,
    else from the run's own ``predictions.csv`` + ``predictions_atoms.npz``, else by evaluating
    the run on ``subset`` of ``data``/``split`` (default: the dataset and split it was trained
    on, from ``model.json``)."""
    run_dir = Path(run_dir)
    if predictions is not None:
        return load_predictions(predictions, atoms)
    if (run_dir / PREDICTIONS_FILE).exists() and (run_dir / ATOMS_FILE).exists():
        return load_predictions(run_dir / PREDICTIONS_FILE, run_dir / ATOMS_FILE)
    if data is None:
        rd = RunDir(run_dir)
        meta = dict(rd.info.get("metadata") or {})
        if "dataset" not in meta:
            raise DataError("no predictions, and model.json does not name the dataset to evaluate on",
                            path=rd.model_json, field="metadata.dataset")
        data, split = meta["dataset"], split if split is not None else meta.get("split")
        if not Path(data).exists():
            raise DataError("no predictions, and the dataset the run was trained on is gone",
                            path=data)
    return evaluate_run(run_dir, data, split, subset=subset)[1]
