"""Run steps: train, evaluate, report (see :mod:`mmlwf.steps`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._common import Out, listed, log

PathLike = str | os.PathLike
#: The metrics shown in evaluate's line, where the model predicts them.
_SHOWN = ("energy_mae_eV", "forces_mae_eV_per_A", "dipole_mae_eA", "esp_rmse_kcal_per_mol_e")


def train_step(config: PathLike | Mapping | None, data: PathLike | Sequence[PathLike],
               split: PathLike | Sequence[PathLike], stats: PathLike | Sequence[PathLike] | None,
               run_dir: PathLike, *, weights: Sequence[float] | None = None, overrides: Sequence[str] = (),
               progress: bool | None = None, verbose: bool = False, summary_every: float | None = None,
               tell: Out = log) -> dict:
    """``mmlwf train`` / rule ``train``: train or resume ``run_dir``; returns the summary
    (:func:`mmlwf.training.exit_code` of it is the exit status: 75 when interrupted).

    ``data``/``split``/``stats``: one each, or lists for a weighted mixture (``weights``,
    ignored for a single dataset). The other arguments: see
    :func:`mmlwf.training.runner.run_training`.
    """
    from ..training.runner import run_training

    data, split = listed(data), listed(split)
    stats = None if stats is None else listed(stats)
    weights = None if weights is None or len(data) == 1 else [float(w) for w in weights]
    summary = run_training(dict(config) if isinstance(config, Mapping) else config, data, split, stats, run_dir,
                           weights=weights, overrides=overrides, progress=progress, verbose=verbose,
                           summary_every=summary_every)
    last = summary.get("last") or {}
    shown = ", ".join(f"{k} {v:.5g}" for k, v in last.items() if k.startswith("valid_") and isinstance(v, float))
    tell.info(f"{summary['status']}: {summary['epochs']} epochs, best epoch {summary['best_epoch']}; {shown}")
    return summary


def evaluate_step(run_dir: PathLike, data: PathLike | Sequence[PathLike],
                  split: PathLike | Sequence[PathLike] | None, metrics: PathLike, *,
                  predictions: PathLike | None = None, atom_predictions: PathLike | None = None,
                  plots: PathLike | None = None, subset: str = "test", checkpoint: str = "best",
                  batch_size: int | None = None, tell: Out = log) -> dict:
    """``mmlwf evaluate`` / rule ``evaluate``: ``metrics`` (JSON), optionally the
    per-structure ``predictions`` (CSV), per-atom ``atom_predictions`` (NPZ) and the figures
    in the folder ``plots``; returns the metrics document.

    For a mixture (lists of ``data``/``split``) the predictions, plots and top-level metrics
    are those of the first dataset, and the document adds ``per_dataset`` metrics (on each
    member's ``subset``). ``split`` may be None for ``subset="all"``. The plots are written
    into a temporary folder renamed to ``plots`` when complete, and ``metrics`` last, so an
    interrupted evaluation leaves no partial set behind.
    """
    from ..analysis.evaluate import evaluate_run, write_atom_predictions, write_metrics, write_predictions

    data = listed(data)
    split = listed(split, len(data))
    if len(split) != len(data):
        from ..errors import ConfigError

        raise ConfigError(f"{len(data)} dataset(s) but {len(split)} split file(s): give one split per dataset")
    extra: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    doc, pred = evaluate_run(run_dir, data[0], split[0], subset=subset, which=checkpoint, **extra)
    if len(data) > 1:  # a mixture: metrics on each member's subset as well
        doc["per_dataset"] = {str(p): evaluate_run(run_dir, p, s, subset=subset, which=checkpoint, **extra)[0]
                              ["metrics"] for p, s in zip(data, split)}
    if plots is not None:
        _write_plots(run_dir, Path(plots), pred, doc["model_type"])
    if predictions is not None:
        write_predictions(pred, predictions)
    if atom_predictions is not None:
        write_atom_predictions(pred, atom_predictions)
    write_metrics(doc, metrics)  # last: its presence means the evaluation is complete
    m = doc["metrics"]
    shown = ", ".join(f"{k} {m[k]:.5g}" for k in _SHOWN if k in m)
    scaled = (doc.get("calibration") or {}).get("scaled") or {}  # an ensemble: how well its spread ranks the error
    shown += "".join(f", {k} {scaled[k]:.3f}" for k in ("energy_spread_spearman", "forces_spread_spearman") if k in scaled)
    tell.info(f"wrote {metrics}: {m['n_structures']} {subset} structures; {shown}")
    return doc


def _write_plots(run_dir: PathLike, plots: Path, pred: Mapping, model_type: str) -> list[Path]:
    """The run's figures into ``plots``, replacing it only once all are written."""
    from ..analysis.plots import make_plots
    from ..fileio import make_temp_dir

    plots.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{plots.name}.", plots.parent)
    try:
        paths = make_plots(run_dir, tmp, pred, model_type)
        if plots.exists():
            shutil.rmtree(plots)
        tmp.rename(plots)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [plots / p.name for p in paths]


def report_step(run_dirs: Sequence[PathLike], html: PathLike, table: PathLike | None = None, *,
                title: str | None = None, tell: Out = log) -> Path:
    """``mmlwf report`` / rule ``report``: the self-contained HTML report on ``run_dirs``,
    and with ``table`` the comparison table (CSV) as well."""
    from ..analysis.report import write_report

    comparison = None
    if table is not None:
        from ..analysis.compare import compare_runs, write_table

        comparison = compare_runs(run_dirs)  # once: the report shows the same table
        write_table(comparison, table)
    write_report(run_dirs, html, table=comparison, **({} if title is None else {"title": title}))
    also = "" if table is None else f" and {table}"
    tell.info(f"wrote {html}{also}: {len(run_dirs)} run(s)")
    return Path(html)


__all__ = ["evaluate_step", "report_step", "train_step"]
