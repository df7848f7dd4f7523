"""Figures of an ensemble's uncertainties (issue 16): how its spreads rank and size the errors.

Made by :func:`mmlwf.analysis.plots.make_plots` beside the figures of the run's model kind
when the predictions hold spreads (:func:`.uncertainty.has_spreads`), so a single model's
figures are exactly those they were. One panel per quantity with a spread (energy, forces,
dipole, ESP; :data:`.uncertainty.QUANTITIES`), in the units of the field (meV, meV/Å, D,
kcal/(mol·e)):

- :data:`ERROR_VS_SPREAD`: ``|error|`` of the ensemble mean against its spread times the
  model's fitted scale, every point, with the RMS error in equal-count bins of spread against
  the bins' RMS spread (raw spreads dashed) and the line y = x on which a calibrated ensemble's
  bins lie (``E|error|^2 = spread^2``, :mod:`.calibration`);
- :data:`CALIBRATION_CURVE`: the observed against the expected proportion of points inside
  their central Gaussian region (:func:`.calibration.calibration_curve`), raw and scaled, with
  the miscalibration areas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .calibration import calibration_curve
from .quantities import FIELD_UNITS
from .uncertainty import Quantity, points, quantities

ERROR_VS_SPREAD, CALIBRATION_CURVE = "error_vs_spread.png", "calibration_curve.png"
#: the figures an ensemble's evaluation adds, in order
UNCERTAINTY_PLOTS = (ERROR_VS_SPREAD, CALIBRATION_CURVE)
#: equal-count bins of spread in :data:`ERROR_VS_SPREAD` (fewer when there are few points)
N_BINS = 12
#: above this many points the points of :data:`ERROR_VS_SPREAD` are a density (hexbin)
DENSITY_THRESHOLD = 2000
_NAMES = {"energy": "Energy", "forces": "Forces (per atom)", "dipole": "Dipole", "esp": "ESP (per grid point)"}


def _figure(n: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * n, 4.3), layout="constrained")
    return fig, fig.subplots(1, n, squeeze=False).ravel()


def _save(fig, path: Path) -> Path:
    from .plots import _save as save  # one PNG writer (atomic, no timestamp)

    return save(fig, Path(path))


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Decimal tick labels on a log axis from ``lo`` to ``hi``, labelled at 1, 2, 3, 5, 7
    times powers of ten over up to a decade, 1, 2, 5 over up to three, powers of ten beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = np.log10(hi / lo)
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.6g}"))
    axis.set_minor_formatter(NullFormatter())


def binned_rms(error_norm: np.ndarray, spread: np.ndarray, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(RMS spread, RMS |error|)`` of equal-count bins of points sorted by spread
    (``min(n_bins, n // 5)`` bins, at least one)."""
    order = np.argsort(spread, kind="stable")
    groups = np.array_split(order, max(1, min(n_bins, spread.size // 5)))
    rms = lambda v: float(np.sqrt(np.mean(v * v)))  # noqa: E731
    return (np.array([rms(spread[g]) for g in groups if g.size]),
            np.array([rms(error_norm[g]) for g in groups if g.size]))


def _error_vs_spread(ax, q: Quantity, pred: Mapping, scale: float) -> None:
    error, spread, _ = points(pred, q)
    factor, unit, _ = FIELD_UNITS[q.unit]
    norm = (np.abs(error) if error.ndim == 1 else np.linalg.norm(error, axis=1)) * factor
    sigma = spread * factor
    shown = np.maximum(norm, np.min(norm[norm > 0]) if np.any(norm > 0) else 1.0)  # log axis: no zeros
    if norm.size > DENSITY_THRESHOLD:
        hb = ax.hexbin(scale * sigma, shown, gridsize=60, bins="log", mincnt=1, cmap="Greys", xscale="log",
                       yscale="log")
        ax.figure.colorbar(hb, ax=ax, label="points per bin")
    else:
        ax.scatter(scale * sigma, shown, s=7, alpha=0.35, color="0.45", edgecolors="none", label="points")
    x, y = binned_rms(norm, scale * sigma)
    ax.plot(x, y, "o-", color="tab:blue", label="binned RMS" + (f", spread × {scale:.3g}" if scale != 1.0 else ""))
    if scale != 1.0:
        xr, yr = binned_rms(norm, sigma)
        ax.plot(xr, yr, "s--", color="tab:orange", ms=4, label="binned RMS, raw spread")
    values = np.concatenate([scale * sigma, sigma, shown])
    lo, hi = float(np.min(values)) / 1.3, float(np.max(values)) * 1.3
    ax.plot([lo, hi], [lo, hi], color="0.2", lw=0.8, ls=":", label="y = x (calibrated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _log_ticks(ax.xaxis, lo, hi)
    _log_ticks(ax.yaxis, lo, hi)
    ax.set_xlabel(f"spread ({unit})")
    ax.set_ylabel(f"|error| of the mean ({unit})")
    ax.set_title(f"{_NAMES[q.name]}: {norm.size} points")
    ax.legend(fontsize="small", loc="upper left")


def error_vs_spread_figure(pred: Mapping, scales: Mapping[str, float]):
    """:data:`ERROR_VS_SPREAD`; ``scales``: the model's spread scale of each quantity."""
    found = [q for q in quantities(pred) if points(pred, q)[1].size]
    fig, axes = _figure(len(found))
    for ax, q in zip(axes, found):
        _error_vs_spread(ax, q, pred, float(scales.get(q.name, 1.0)))
    fig.suptitle("Error against ensemble spread")
    return fig


def calibration_figure(pred: Mapping, scales: Mapping[str, float]):
    """:data:`CALIBRATION_CURVE`; ``scales``: the model's spread scale of each quantity."""
    found = [q for q in quantities(pred) if points(pred, q)[1].size]
    fig, axes = _figure(len(found))
    for ax, q in zip(axes, found):
        error, spread, _ = points(pred, q)
        scale = float(scales.get(q.name, 1.0))
        raw = calibration_curve(error, spread)
        ax.plot([0, 1], [0, 1], color="0.2", lw=0.8, ls=":", label="calibrated")
        ax.plot(raw.expected, raw.observed, color="tab:orange", ls="--" if scale != 1.0 else "-",
                label=f"raw spread (area {raw.area:.3f})")
        if scale != 1.0:
            scaled = calibration_curve(error, spread, scale)
            ax.plot(scaled.expected, scaled.observed, color="tab:blue",
                    label=f"spread × {scale:.3g} (area {scaled.area:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("expected proportion in interval")
        ax.set_ylabel("observed proportion in interval")
        ax.set_title(f"{_NAMES[q.name]}: {error.shape[0]} points")
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle("Calibration curve (Gaussian central intervals)")
    return fig


def make_uncertainty_plots(pred: Mapping, out_dir: str | os.PathLike, info: Mapping | None) -> list[Path]:
    """Write :data:`UNCERTAINTY_PLOTS` into ``out_dir`` from an ensemble's prediction dict
    (``info``: its ``model.json``, for the fitted scales); returns their paths (none when no
    quantity has reference, prediction and a positive spread)."""
    from ..ensemble import spread_scale

    found = [q for q in quantities(pred) if points(pred, q)[1].size]
    if not found:
        return []
    scales = {q.name: spread_scale(info, q.name) for q in found}
    out = Path(out_dir)
    return [_save(error_vs_spread_figure(pred, scales), out / ERROR_VS_SPREAD),
            _save(calibration_figure(pred, scales), out / CALIBRATION_CURVE)]
