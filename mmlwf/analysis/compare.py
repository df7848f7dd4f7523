"""One table comparing runs: ``mmlwf compare RUN... -o table.csv`` (and the report's first table).

Per run: the experiment name (the run directory's name), the model type and its key
hyperparameters (the full model configuration with defaults filled in, lengths in Å), the
main training settings, epochs, training time, parameter count, and the summary metrics
from the run's ``metrics.json`` when present, else from the best validation row of its
``history.csv`` (the ``metrics_source`` column says which).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..errors import DataError
from ..fileio import atomic_write
from .evaluate import METRICS_FILE, model_type, read_metrics

#: summary metrics in the table, in order (those a run has)
SUMMARY_METRICS = (
    "energy_mae_eV", "energy_rmse_eV", "energy_per_atom_mae_eV",
    "forces_mae_eV_per_A", "forces_rmse_eV_per_A",
    "dipole_mae_eA", "dipole_rmse_eA", "charge_mae_e", "charge_rmse_e", "mono_mae_e", "mono_rmse_e",
    "esp_mae_V", "esp_rmse_V", "esp_mae_kcal_per_mol_e", "esp_rmse_kcal_per_mol_e",
)
#: training settings in the table
TRAINING_KEYS = ("learning_rate", "batch_size", "optimizer", "schedule", "ema_decay", "max_epochs", "seed")
#: model keys that are lengths (shown with an ``_A`` suffix)
_LENGTH_KEYS = ("cutoff", "coulomb_cutoff", "max_displacement")


def _model_settings(kind: str, model: dict) -> dict:
    """The model's full configuration (defaults filled in); lengths suffixed ``_A``."""
    from ..models import dcmnet, physnet

    modules = {"physnet": physnet, "dcmnet": dcmnet}
    full = dict(model)
    if kind in modules:
        try:
            full = modules[kind].model_config(modules[kind].build_model(model))
        except ValueError:
            pass  # keep what the config says
    full.pop("type", None)
    full.pop("max_atomic_number", None)
    return {(f"{k}_A" if k in _LENGTH_KEYS else k): v for k, v in full.items()}


def parameter_count(run_dir: str | os.PathLike, which: str = "best") -> int | None:
    """Number of trainable parameters in the run's ``which`` checkpoint (None without one)."""
    import jax

    from ..training.checkpoint import load_params

    if not (Path(run_dir) / "checkpoints" / which).is_dir():
        return None
    try:
        params, _ = load_params(run_dir, which, ema=False)
    except FileNotFoundError:
        return None
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def _history_metrics(history) -> tuple[dict, str]:
    """Summary metrics of the best validation row (lowest ``valid_loss``), else the last row."""
    if "valid_loss" in history and history["valid_loss"].notna().any():
        row, part = history.loc[history["valid_loss"].idxmin()], "valid"
    else:
        row, part = history.iloc[-1], "train"
    out = {m: float(row[f"{part}_{m}"]) for m in SUMMARY_METRICS
           if f"{part}_{m}" in row.index and np.isfinite(row[f"{part}_{m}"])}
    return out, f"history.csv ({part}, epoch {int(row['epoch'])})"


def run_summary(run_dir: str | os.PathLike) -> dict:
    """The comparison row of one run directory (see the module docstring)."""
    from .plots import read_history

    run_dir = Path(run_dir)
    kind = model_type(run_dir)
    cfg_path = run_dir / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except FileNotFoundError:
        raise DataError("not a run directory (no config.yaml)", path=cfg_path) from None
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML ({' '.join(str(exc).split())})", path=cfg_path) from None
    row: dict = {"experiment": run_dir.resolve().name, "model_type": kind}
    row |= _model_settings(kind, dict(cfg.get("model") or {}))
    training = dict(cfg.get("training") or {})
    row |= {k: training.get(k) for k in TRAINING_KEYS}
    history = read_history(run_dir)
    row["epochs"] = int(history["epoch"].iloc[-1])
    row["training_time_s"] = float(history["wall_time_s"].iloc[-1]) if "wall_time_s" in history else None
    row["n_params"] = parameter_count(run_dir)
    if (run_dir / METRICS_FILE).exists():
        doc = read_metrics(run_dir / METRICS_FILE)
        m = doc["metrics"]
        metrics = {k: m[k] for k in SUMMARY_METRICS if k in m}
        ckpt = doc.get("checkpoint") or {}
        source = f"{METRICS_FILE} ({doc.get('subset')}, n={m.get('n_structures')}, epoch {ckpt.get('epoch')})"
    else:
        metrics, source = _history_metrics(history)
    row["metrics_source"] = source
    return row | metrics


def compare_runs(run_dirs: Sequence[str | os.PathLike]):
    """A :class:`pandas.DataFrame` with one row per run (columns: union over the runs)."""
    import pandas as pd

    if not run_dirs:
        raise DataError("no run directories to compare")
    table = pd.DataFrame([run_summary(r) for r in run_dirs])
    tail = [*TRAINING_KEYS, "epochs", "training_time_s", "n_params", "metrics_source", *SUMMARY_METRICS]
    model_keys = [c for c in table.columns if c not in tail]  # experiment, model_type, model settings
    return table[model_keys + [c for c in tail if c in table.columns]]


def write_table(table, path: str | os.PathLike) -> None:
    """The comparison table as CSV, atomically."""
    with atomic_write(path) as fh:
        table.to_csv(fh, index=False, float_format="%.6g")

