"""One table comparing runs: ``mmlwf compare RUN... -o table.csv`` (and the report's first table).

Per run, in this order: the experiment name (the run directory's name); the headline errors
in the units of the field (:data:`~.quantities.HEADLINE`; column names carry the unit, e.g.
``energy_mae_meV``, ``dipole_mae_D``), from the run's ``metrics.json`` when present, else
from the best validation row of its ``history.csv`` (the ``metrics_source`` column says
which), errors of terms the run did not train (loss weight 0) left empty; for an ensemble its
size and the calibration of its spreads on the evaluated subset (:data:`UNCERTAINTY_COLUMNS`,
from ``metrics.json``'s ``calibration``, spreads with the fitted scale); the cost (epochs,
training time, parameter count, training throughput, batch padding efficiency, XLA
compilations: :data:`COST_COLUMNS`); then the hyperparameters: the model type and its full
configuration (defaults filled in, lengths in Å) and the main training settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..errors import DataError
from ..fileio import atomic_write
from ..rundir import METRICS_FILE, RunDir
from .evaluate import read_metrics
from .quantities import HEADLINE, field_name, field_unit, term_weights, trained, training_with_defaults

#: the headline error columns (field units) and the canonical metric each comes from
ERROR_COLUMNS = {field_name(m): m for m in HEADLINE}
#: per-epoch history.csv columns of the training's cost (absent in runs of older versions)
THROUGHPUT_COLUMNS = ("train_structures_per_s", "train_atoms_per_s", "padding_efficiency")
COMPILATIONS_COLUMN = "xla_compilations"
#: the cost columns of the table
COST_COLUMNS = ("epochs", "training_time_s", "n_params", *THROUGHPUT_COLUMNS, COMPILATIONS_COLUMN)
#: an ensemble's columns: its size and the calibration of its (scaled) spreads, from metrics.json
UNCERTAINTY_COLUMNS = ("ensemble_members", "energy_spread_spearman", "forces_spread_spearman",
                       "forces_miscalibration_area")
#: training settings in the table
TRAINING_KEYS = ("learning_rate", "batch_atoms", "batch_size", "optimizer", "schedule", "ema_decay", "max_epochs", "seed")
#: model keys that are lengths (shown with an ``_A`` suffix)
_LENGTH_KEYS = ("cutoff", "coulomb_cutoff", "max_displacement")


def _model_settings(kind: str, model: dict) -> dict:
    """The model's full configuration (defaults filled in by its declaration, without
    building it); lengths suffixed ``_A``."""
    from ..errors import ConfigError
    from ..models.registry import get
    from ..settings import SettingError, parse

    full = dict(model)
    try:
        full = parse(get(kind).settings_class, {**model, "type": kind}).model_dump()
    except (ConfigError, SettingError, ValueError):
        pass  # keep what the config says
    full.pop("type", None)
    full.pop("max_atomic_number", None)
    return {(f"{k}_A" if k in _LENGTH_KEYS else k): v for k, v in full.items()}


def parameter_count(run_dir: str | os.PathLike, which: str = "best") -> int | None:
    """Trainable parameters of the run (``model.json``'s ``n_parameters``, else counted from
    the ``which`` checkpoint's metadata, restoring nothing); None when neither says."""
    try:
        return RunDir(run_dir).n_parameters(which)
    except DataError:
        return None


def _history_metrics(history) -> tuple[dict, str]:
    """Headline metrics of the best validation row (lowest ``valid_loss``), else the last row."""
    if "valid_loss" in history and history["valid_loss"].notna().any():
        row, part = history.loc[history["valid_loss"].idxmin()], "valid"
    else:
        row, part = history.iloc[-1], "train"
    out = {m: float(row[f"{part}_{m}"]) for m in HEADLINE
           if f"{part}_{m}" in row.index and np.isfinite(row[f"{part}_{m}"])}
    return out, f"history.csv ({part}, epoch {int(row['epoch'])})"


def cost_summary(history) -> dict:
    """Training throughput and padding efficiency (median over the epochs after the first,
    which compiles; the first when there is no other) and the XLA compilations (last row);
    None for a column the history lacks."""
    later = history.iloc[1:] if len(history) > 1 else history
    out: dict = {}
    for col in THROUGHPUT_COLUMNS:
        values = later[col].to_numpy(np.float64) if col in later else np.array([])
        values = values[np.isfinite(values)]
        out[col] = float(np.median(values)) if values.size else None
    values = history[COMPILATIONS_COLUMN].dropna() if COMPILATIONS_COLUMN in history else ()
    out[COMPILATIONS_COLUMN] = int(values.iloc[-1]) if len(values) else None
    return out


def run_summary(run_dir: str | os.PathLike) -> dict:
    """The comparison row of one run directory (see the module docstring)."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    kind = rd.model_type
    cfg_path = rd.config_yaml
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except FileNotFoundError:
        raise DataError("not a run directory (no config.yaml)", path=cfg_path) from None
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML ({' '.join(str(exc).split())})", path=cfg_path) from None
    history = rd.history_frame()
    if (run_dir / METRICS_FILE).exists():
        doc = read_metrics(run_dir / METRICS_FILE)
        m = doc["metrics"]
        metrics = {k: m[k] for k in HEADLINE if k in m}
        ckpt = doc.get("checkpoint") or {}
        source = f"{METRICS_FILE} ({doc.get('subset')}, n={m.get('n_structures')}, epoch {ckpt.get('epoch')})"
    else:
        metrics, source = _history_metrics(history)
    training = dict(cfg.get("training") or {})
    weights = term_weights(training_with_defaults(training))
    row: dict = {"experiment": run_dir.resolve().name}
    row |= {field_name(k): v * field_unit(k)[0] for k, v in metrics.items() if trained(k, weights)}
    row["metrics_source"] = source
    row |= _uncertainty(rd, doc if (run_dir / METRICS_FILE).exists() else None)
    row["epochs"] = int(history["epoch"].iloc[-1])
    row["training_time_s"] = float(history["wall_time_s"].iloc[-1]) if "wall_time_s" in history else None
    row["n_params"] = parameter_count(run_dir)
    row |= cost_summary(history)
    row["model_type"] = kind
    row |= _model_settings(kind, dict(cfg.get("model") or {}))
    return row | {k: training.get(k) for k in TRAINING_KEYS}


def _uncertainty(rd: RunDir, metrics_doc: dict | None) -> dict:
    """The :data:`UNCERTAINTY_COLUMNS` of an ensemble run (nothing for a single model); the
    calibration columns only when the run was evaluated."""
    from ..ensemble import ensemble_size

    members = ensemble_size(rd.info if rd.is_run() else None)
    if members == 1:
        return {}
    scaled = ((metrics_doc or {}).get("calibration") or {}).get("scaled") or {}
    return {"ensemble_members": members} | {c: scaled[c] for c in UNCERTAINTY_COLUMNS[1:] if c in scaled}


def compare_runs(run_dirs: Sequence[str | os.PathLike]):
    """A :class:`pandas.DataFrame` with one row per run (columns: union over the runs)."""
    import pandas as pd

    if not run_dirs:
        raise DataError("no run directories to compare")
    table = pd.DataFrame([run_summary(r) for r in run_dirs])
    groups = column_groups(table.columns)
    return table[["experiment"] + [c for _, cols in groups for c in cols]]


def column_groups(columns) -> list[tuple[str, list[str]]]:
    """The table's columns in groups, in order: ``errors`` (those any run has, with
    ``metrics_source``), ``uncertainty`` (ensembles), ``cost``, ``model`` (``model_type`` and
    the model settings), ``training``."""
    columns = list(columns)
    fixed = {"experiment", "metrics_source", "model_type", *ERROR_COLUMNS, *UNCERTAINTY_COLUMNS, *COST_COLUMNS,
             *TRAINING_KEYS}
    return [("errors", [c for c in ERROR_COLUMNS if c in columns] + ["metrics_source"]),
            ("uncertainty", [c for c in UNCERTAINTY_COLUMNS if c in columns]),
            ("cost", [c for c in COST_COLUMNS if c in columns]),
            ("model", ["model_type"] + [c for c in columns if c not in fixed]),
            ("training", [c for c in TRAINING_KEYS if c in columns])]


def write_table(table, path: str | os.PathLike) -> None:
    """The comparison table as CSV, atomically."""
    with atomic_write(path) as fh:
        table.to_csv(fh, index=False, float_format="%.6g")

