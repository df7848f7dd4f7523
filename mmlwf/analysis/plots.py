"""Figures of a trained run (headless: :class:`matplotlib.figure.Figure` with the Agg canvas,
no pyplot state, so nothing stays open after a figure is saved).

:data:`PLOT_FILES` gives the files made for each model kind (from the model registry; the
workflow declares them as outputs); :func:`make_plots` writes them from the run's
``history.csv`` (:meth:`mmlwf.rundir.RunDir.history_frame`) and a prediction dict
(:func:`~mmlwf.analysis.evaluate.load_predictions` or
:func:`~mmlwf.analysis.evaluate.evaluate_run`). Captions: :mod:`mmlwf.analysis.captions`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write
from ..rundir import RunDir
from ..settings.models import DEFAULT_MODEL
from ..units import DEBYE_PER_E_ANGSTROM, ESP
from .energy_fit import relative_energies
from .quantities import FIELD_UNITS, NAMES, run_training_config, term_weights

class _PlotFiles(Mapping[str, tuple[str, ...]]):
    """The figure files of each registered model kind (:attr:`ModelKind.plots`)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        from ..models.registry import kinds

        return tuple(kinds()[name].plots)

    def __iter__(self):
        from ..models.registry import kinds

        return iter(kinds())

    def __len__(self) -> int:
        from ..models.registry import kinds

        return len(kinds())


#: the PNG files :func:`make_plots` writes for each model type (the workflow declares them as outputs)
PLOT_FILES: Mapping[str, tuple[str, ...]] = _PlotFiles()
#: above this many points a parity plot is a density (hexbin) instead of a scatter
DENSITY_THRESHOLD = 2000
DPI = 110

_KCAL = 1.0 / ESP["kcal/mol/e"]  # kcal/(mol·e) per V
_UNIT_LABELS = {"eV": "eV", "eV_per_A": "eV/Å", "eA": "e·Å", "e": "e", "V": "V",
                "kcal_per_mol_e": "kcal/(mol·e)"}
_METRIC = re.compile(r"^(train|valid)_(?P<term>[a-z_]+?)_(?P<stat>mae|rmse)_(?P<unit>.+)$")
#: a term whose MAE stays below this (in its history unit) in every epoch is at float32
#: rounding: enforced by the model (the total charge), not learnt, so it gets no curve
ROUNDING_LEVEL = 1e-5


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 4.2)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (no timestamp in the file)."""
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, metadata={"Software": None})
    return path


# ----------------------------------------------------------------------------- learning curves


def history_terms(columns) -> dict[str, dict]:
    """Trained terms in ``history.csv`` columns: ``{"energy": {"unit": "eV", "columns":
    {("train", "mae"): col, ...}}, ...}``, plus ``"loss"`` from ``train_loss``/``valid_loss``."""
    terms: dict[str, dict] = {}
    for col in columns:
        m = _METRIC.match(col)
        if m:
            t = terms.setdefault(m["term"], {"unit": m["unit"], "columns": {}})
            t["columns"][(col.split("_", 1)[0], m["stat"])] = col
    loss = {(p, "loss"): f"{p}_loss" for p in ("train", "valid") if f"{p}_loss" in columns}
    return ({"loss": {"unit": "", "columns": loss}} if loss else {}) | terms


def curve_terms(history, weights: Mapping[str, float] | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """``(terms to plot, {term: why it is not plotted})``: the loss and the terms the run
    trained (``weights``: loss weight per term; None: every term), without those whose
    error stays at float32 rounding level (:data:`ROUNDING_LEVEL`), such as a total charge
    the model enforces."""
    shown, left = {}, {}
    for term, spec in history_terms(list(history.columns)).items():
        if term != "loss" and weights is not None and weights.get(term, 0.0) <= 0:
            left[term] = "not trained (loss weight 0)"
            continue
        maes = [history[c].to_numpy(np.float64) for (_, stat), c in spec["columns"].items() if stat == "mae"]
        values = np.concatenate(maes) if maes else np.array([])
        values = values[np.isfinite(values)]
        if term != "loss" and values.size and values.max() < ROUNDING_LEVEL:
            unit = _UNIT_LABELS.get(spec["unit"], spec["unit"])
            left[term] = f"enforced by the model (error < {ROUNDING_LEVEL:g} {unit}, float32 rounding)"
            continue
        shown[term] = spec
    return shown, left


def plot_learning_curves(history, path: Path, weights: Mapping[str, float] | None = None,
                         ema: bool = False) -> Path:
    """:func:`learning_curves_figure` as a PNG."""
    return _save(learning_curves_figure(history, weights, ema), path)


def learning_curves_figure(history, weights: Mapping[str, float] | None = None, ema: bool = False):
    """One panel per trained term (and the loss): training and validation MAE (solid) and
    RMSE (dashed) against the epoch, log y; a note names the terms left out and says what
    the training and validation curves measure (``ema``: validation on the EMA weights)."""
    terms, left = curve_terms(history, weights)
    if not terms or "epoch" not in history:
        raise DataError("no epoch or metric columns to plot", field="history.csv")
    ncols = min(len(terms), 3)
    nrows = -(-len(terms) // ncols)
    fig, axes = _figure(ncols, nrows, (4.6, 3.6))
    colours = {"train": "tab:blue", "valid": "tab:orange"}
    styles = {"mae": "-", "loss": "-", "rmse": "--"}
    parts = {"train": "training", "valid": "validation"}
    epoch = history["epoch"].to_numpy()
    for ax, (term, spec) in zip(axes, terms.items()):
        scale, unit, _ = FIELD_UNITS.get(spec["unit"], (1.0, "", ""))  # history units -> field units
        for (part, stat), col in sorted(spec["columns"].items()):
            y = history[col].to_numpy(np.float64) * scale
            ok = np.isfinite(y) & (y > 0)
            if ok.any():
                label = f"{parts[part]} {stat.upper() if stat != 'loss' else 'loss'}"
                ax.plot(epoch[ok], y[ok], styles[stat], color=colours[part], marker="." if ok.sum() < 30 else None,
                        label=label)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_integer_locator())
        name = NAMES.get(term, term.replace("_", " "))
        ax.set_ylabel(f"{name} error ({unit})" if unit else "loss (weighted sum of MSEs)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    lines = ["training: mean over each epoch's batches, with the model parameters changing during the epoch;",
             "validation: the " + ("moving average (EMA) of the parameters" if ema else "parameters")
             + " at the end of the epoch"]
    lines += [f"not plotted: {NAMES.get(t, t)}, {why}" for t, why in left.items()]
    fig.supxlabel("\n".join(lines), fontsize="small", color="0.25")
    fig.suptitle("Learning curves")
    return fig


def _plain_log_axis(axis) -> None:
    """Plain decimal tick labels (``0.2``, ``90``) on a log axis instead of ``2×10⁻¹``."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # LogFormatter's choice of labelled ticks, written as %g
        def __call__(self, x, pos=None):
            return f"{x:.6g}" if super().__call__(x, pos) else ""

    axis.set_major_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.6)))
    axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.6)))


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


# ----------------------------------------------------------------------------- parity and errors


def _plain_axes(ax) -> None:
    """Tick labels as plain numbers: no offset (``-4.209e3``) and no scientific multiplier."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        axis.set_major_formatter(fmt)


def _parity(ax, ref: np.ndarray, pred: np.ndarray, quantity: str, unit: str, err_unit: str | None = None,
            err_scale: float = 1.0) -> None:
    """Parity of ``pred`` against ``ref`` with y = x; MAE and RMSE in the corner, in
    ``err_unit`` (``err_scale`` from ``unit``; default the axes' unit)."""
    ref, pred = np.ravel(ref), np.ravel(pred)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if ref.size > DENSITY_THRESHOLD:
        hb = ax.hexbin(ref, pred, gridsize=80, bins="log", mincnt=1, cmap="viridis", extent=(lo, hi, lo, hi))
        ax.figure.colorbar(hb, ax=ax, label="points per bin")
    else:
        ax.scatter(ref, pred, s=8, alpha=0.6, edgecolors="none")
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _plain_axes(ax)
    d = (pred - ref) * err_scale
    eu = err_unit or unit
    ax.text(0.04, 0.96, f"MAE {np.mean(np.abs(d)):.4g} {eu}\nRMSE {np.sqrt(np.mean(d * d)):.4g} {eu}\n"
            f"n = {ref.size}", transform=ax.transAxes, va="top", fontsize="small",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")


def plot_parity_energy(pred: Mapping, path: Path) -> Path:
    """:func:`energy_parity_figure` as a PNG."""
    return _save(energy_parity_figure(pred), path)


def energy_parity_figure(pred: Mapping):
    """Energies relative to fitted element energies (:func:`relative_energies`), predicted
    against reference, with the errors in meV."""
    fig, (ax,) = _figure()
    ref, new, _ = relative_energies(pred)
    _parity(ax, ref, new, "energy − fitted element energies", "eV", "meV", 1e3)
    ax.set_title(f"Energy parity ({len(ref)} structures)")
    return fig


def plot_parity_forces(pred: Mapping, path: Path) -> Path:
    fig, (ax,) = _figure()
    _parity(ax, pred["F_ref"], pred["F_pred"], "force component", "eV/Å", "meV/Å", 1e3)
    ax.set_title(f"Force parity (x, y, z of {len(pred['F_ref'])} atoms)")
    return _save(fig, path)


def _histogram(ax, values: np.ndarray, xlabel: str, title: str) -> None:
    values = np.ravel(values)
    ax.hist(values, bins=min(60, max(10, int(np.sqrt(values.size)))), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(_integer_locator())
    ax.set_title(title)


def plot_error_histogram(pred: Mapping, path: Path) -> Path:
    """:func:`error_histogram_figure` as a PNG."""
    return _save(error_histogram_figure(pred), path)


def error_histogram_figure(pred: Mapping):
    """Energy error per structure (meV), force component errors (meV/Å), and the dipole
    error's length (D) when the model predicts dipoles and the data has them."""
    panels = [((np.asarray(pred["E_pred"]) - pred["E_ref"]) * 1e3, "energy error, predicted − reference (meV)",
               "Energy error per structure")]
    panels.append(((np.asarray(pred["F_pred"]) - pred["F_ref"]) * 1e3,
                   "force component error, predicted − reference (meV/Å)", "Force component errors"))
    if "D_pred" in pred and "D_ref" in pred:
        panels.append((np.linalg.norm(np.asarray(pred["D_pred"]) - pred["D_ref"], axis=1) * DEBYE_PER_E_ANGSTROM,
                       "length of the dipole error vector (D)", "Dipole error per structure"))
    fig, axes = _figure(len(panels), 1, (4.6, 3.8))
    for ax, (values, xlabel, title) in zip(axes, panels):
        _histogram(ax, values, xlabel, title)
    fig.suptitle("Error distributions")
    return fig


def plot_force_errors_by_element(per_element: Mapping[str, Mapping], path: Path) -> Path:
    """Force component MAE and RMSE per element (bars), with the atom count of each."""
    symbols = list(per_element)
    mae = [per_element[s]["forces_mae_eV_per_A"] * 1e3 for s in symbols]
    rmse = [per_element[s]["forces_rmse_eV_per_A"] * 1e3 for s in symbols]
    x = np.arange(len(symbols))
    fig, (ax,) = _figure(size=(max(4.0, 1.2 * len(symbols) + 2.0), 4.0))
    ax.bar(x - 0.2, mae, 0.4, label="MAE")
    ax.bar(x + 0.2, rmse, 0.4, label="RMSE")
    ax.set_xticks(x, [f"{s}\n({per_element[s]['n_atoms']} atoms)" for s in symbols])
    ax.set_xlabel("element")
    ax.set_ylabel("force component error (meV/Å)")
    ax.set_title("Force errors per element")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- DCMNet


def _principal_frame(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, axes)``: the atoms' centroid and principal axes (rows, largest spread first)."""
    centre = R.mean(axis=0)
    _, _, vt = np.linalg.svd(R - centre, full_matrices=True)
    return centre, vt


def _molecule(pred: Mapping, j: int) -> dict:
    """Atoms, charges and grid of the ``j``-th predicted structure."""
    a, b = int(pred["offsets"][j]), int(pred["offsets"][j + 1])
    g0, g1 = int(pred["grid_offsets"][j]), int(pred["grid_offsets"][j + 1])
    return {"index": int(pred["index"][j]), "Z": np.asarray(pred["Z"][a:b]), "R": np.asarray(pred["R"][a:b]),
            "dcm_q": np.asarray(pred["dcm_charges"][a:b]), "dcm_R": np.asarray(pred["dcm_positions"][a:b]),
            "grid": np.asarray(pred["grid"][g0:g1]),
            "dV": (np.asarray(pred["esp_pred"][g0:g1]) - pred["esp_ref"][g0:g1]) * _KCAL}


def _draw_nuclei(ax, xy: np.ndarray, Z: np.ndarray, beside: bool = False) -> None:
    """Nuclei as circles in their element colours with the element symbol on them (``beside``:
    next to them, where other markers would hide it)."""
    from ase.data import chemical_symbols
    from ase.data.colors import jmol_colors

    ax.scatter(xy[:, 0], xy[:, 1], s=200, c=[jmol_colors[z] for z in Z], edgecolors="k", linewidths=0.8,
               alpha=0.8, zorder=2)
    for (x, y), z in zip(xy, Z):
        if beside:
            ax.annotate(chemical_symbols[int(z)], (x, y), xytext=(-9, 7), textcoords="offset points", ha="right",
                        va="bottom", fontsize=9, fontweight="bold", zorder=5)
        else:
            ax.annotate(chemical_symbols[int(z)], (x, y), ha="center", va="center", fontsize=8, zorder=3)


def nearest_atom_distances(pred: Mapping) -> np.ndarray:
    """Distance (Å) from every grid point to the nearest atom of its own structure."""
    out = np.empty(len(pred["esp_ref"]))
    for j in range(len(pred["index"])):
        a, b = int(pred["offsets"][j]), int(pred["offsets"][j + 1])
        g0, g1 = int(pred["grid_offsets"][j]), int(pred["grid_offsets"][j + 1])
        if g1 > g0:
            d = np.linalg.norm(pred["grid"][g0:g1, None, :] - pred["R"][None, a:b, :], axis=-1)
            out[g0:g1] = d.min(axis=1)
    return out


def plot_esp_error(pred: Mapping, path: Path) -> Path:
    """ESP over the grid points: parity of all points, |error| against the distance to the
    nearest atom, and the error at the grid points of one molecule (principal-axes frame)."""
    ref, new = np.asarray(pred["esp_ref"]) * _KCAL, np.asarray(pred["esp_pred"]) * _KCAL
    fig, axes = _figure(3, 1, (4.8, 4.4))
    _parity(axes[0], ref, new, "ESP", "kcal/(mol·e)")
    axes[0].set_title(f"ESP parity ({ref.size} grid points)")
    dist, err = nearest_atom_distances(pred), np.abs(new - ref)
    ax = axes[1]
    if err.size > DENSITY_THRESHOLD:
        hb = ax.hexbin(dist, err, gridsize=60, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="points per bin")
    else:
        ax.scatter(dist, err, s=8, alpha=0.6, edgecolors="none")
    ax.set_xlabel("distance to the nearest atom (Å)")
    ax.set_ylabel("|ESP error| (kcal/(mol·e))")
    ax.set_title("ESP error against distance")
    ax.grid(True, alpha=0.3)
    mol = _molecule(pred, 0)
    centre, axes_ = _principal_frame(mol["R"])
    g = (mol["grid"] - centre) @ axes_.T
    order = np.argsort(np.abs(mol["dV"]))  # largest errors drawn last (on top)
    lim = float(np.max(np.abs(mol["dV"]))) or 1.0
    ax = axes[2]
    sc = ax.scatter(g[order, 0], g[order, 1], c=mol["dV"][order], cmap="RdBu_r", vmin=-lim, vmax=lim, s=6)
    fig.colorbar(sc, ax=ax, label="ESP error, predicted - reference (kcal/(mol·e))")
    _draw_nuclei(ax, ((mol["R"] - centre) @ axes_.T)[:, :2], mol["Z"])
    ax.set_aspect("equal")
    ax.set_xlabel("first principal axis (Å)")
    ax.set_ylabel("second principal axis (Å)")
    ax.set_title(f"ESP error at the grid points of structure {mol['index']}")
    fig.suptitle("Electrostatic potential errors over the grid points")
    return _save(fig, path)


def plot_charge_positions(pred: Mapping, path: Path) -> Path:
    """The distributed charges of the first predicted structure around its nuclei, in two
    projections of the principal-axes frame; lines join each charge to its atom."""
    mol = _molecule(pred, 0)
    centre, axes_ = _principal_frame(mol["R"])
    nuc = (mol["R"] - centre) @ axes_.T
    pos = (mol["dcm_R"] - centre) @ axes_.T  # (atoms, n_dcm, 3)
    q = mol["dcm_q"]
    lim = float(np.max(np.abs(q))) or 1.0
    half = float(max(np.max(np.abs(nuc)), np.max(np.abs(pos)))) + 0.6  # same Å scale on every axis
    fig, axes = _figure(2, 1, (5.0, 4.6))
    for ax, (i, j) in zip(axes, ((0, 1), (0, 2))):
        for a in range(len(nuc)):
            for k in range(pos.shape[1]):
                ax.plot([nuc[a, i], pos[a, k, i]], [nuc[a, j], pos[a, k, j]], color="0.5", lw=0.7, zorder=1)
        _draw_nuclei(ax, nuc[:, [i, j]], mol["Z"], beside=True)
        sc = ax.scatter(pos[..., i].ravel(), pos[..., j].ravel(), c=q.ravel(), cmap="RdBu_r", vmin=-lim, vmax=lim,
                        s=45, marker="D", edgecolors="k", linewidths=0.5, zorder=4)
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
        ax.set_xlabel(f"principal axis {i + 1} (Å)")
        ax.set_ylabel(f"principal axis {j + 1} (Å)")
        ax.grid(True, alpha=0.3)
    fig.colorbar(sc, ax=list(axes), label="distributed charge (e)", shrink=0.85)
    fig.suptitle(f"Distributed charges of structure {mol['index']} ({q.shape[1]} per atom)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- a run


def make_plots(run_dir: str | os.PathLike, out_dir: str | os.PathLike, pred: Mapping,
               model_type: str = DEFAULT_MODEL) -> list[Path]:
    """Write :data:`PLOT_FILES` ``[model_type]`` into ``out_dir`` from the run's history and
    the prediction dict ``pred`` (and an ensemble's uncertainty figures, :mod:`.uncertainty_plots`);
    returns the paths in that order."""
    from .evaluate import per_element_metrics
    from .uncertainty import has_spreads

    from ..models.registry import kinds

    kind = kinds().get(model_type)
    if kind is None:
        raise DataError(f"no plots defined for model type '{model_type}' (known: {', '.join(PLOT_FILES)})",
                        path=run_dir)
    for key in kind.plot_needs:
        if key not in pred:
            raise DataError(f"{model_type} predictions lack it (the per-atom predictions file is needed too)",
                            field=key)
    if len(pred["index"]) == 0:
        raise DataError("no structures in the predictions", field="index")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = RunDir(run_dir).history_frame()
    training = run_training_config(run_dir)
    makers = {
        "learning_curves.png": lambda p: plot_learning_curves(history, p, term_weights(training),
                                                              float(training.get("ema_decay") or 0) > 0),
        "parity_energy.png": lambda p: plot_parity_energy(pred, p),
        "parity_forces.png": lambda p: plot_parity_forces(pred, p),
        "error_histogram.png": lambda p: plot_error_histogram(pred, p),
        "force_errors_by_element.png": lambda p: plot_force_errors_by_element(per_element_metrics(pred), p),
        "esp_error.png": lambda p: plot_esp_error(pred, p),
        "charge_positions.png": lambda p: plot_charge_positions(pred, p),
    }
    unknown = [name for name in kind.plots if name not in makers]
    if unknown:
        raise DataError(f"model type '{model_type}' asks for unknown plots {', '.join(unknown)} "
                        f"(known: {', '.join(makers)})", path=run_dir)
    paths = [makers[name](out / name) for name in kind.plots]
    from .uncertainty_plots import make_uncertainty_plots  # an ensemble's: error vs spread, calibration

    return paths + make_uncertainty_plots(pred, out, RunDir(run_dir).info) if has_spreads(pred) else paths
