"""The self-contained HTML report of one or many runs: ``mmlwf report RUN... -o report.html``.

One file, no external references: the CSS is inline and every figure is a base64 PNG data
URI, so the page can be mailed, archived or opened offline. Content: the comparison table
(:mod:`.compare`: headline errors in field units with the best run per row marked, then the
cost and the hyperparameters), and per run its metrics (overall and per element, in field
units: :mod:`.quantities`), training summary, figures with captions (:mod:`.captions`) and
configuration. Figures come from the run's
``plots/`` folder; a run without them gets them made into a temporary folder. An ensemble's
section also has its calibration (:mod:`.uncertainty`: raw and scaled spreads) and its
uncertainty figures (:mod:`.uncertainty_plots`); a single model's is as it was.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import __version__
from ..ensemble import ensemble_size
from ..fileio import atomic_write
from ..rundir import METRICS_FILE, PLOTS_DIR, RunDir
from ..units import DEBYE_PER_E_ANGSTROM
from .captions import caption
from .compare import ERROR_COLUMNS, column_groups, compare_runs
from .evaluate import read_metrics, run_predictions
from .plots import PLOT_FILES, make_plots
from .uncertainty import calibration_table
from .uncertainty_plots import UNCERTAINTY_PLOTS
from .quantities import field_unit, in_field_units, parse, run_training_config, term_weights, trained

#: shown for a value a run does not have
ABSENT = "—"
#: cost columns of the comparison: (label, factor applied for display)
COST_LABELS = {
    "epochs": ("epochs", 1), "training_time_s": ("training time (s)", 1), "n_params": ("parameters", 1),
    "train_structures_per_s": ("training throughput (structures/s)", 1),
    "train_atoms_per_s": ("training throughput (atoms/s)", 1),
    "padding_efficiency": ("batch padding efficiency (% real atoms)", 100),
    "xla_compilations": ("XLA compilations", 1),
}
#: labels of the ensemble rows of the comparison table (:data:`.compare.UNCERTAINTY_COLUMNS`)
UNCERTAINTY_LABELS = {
    "ensemble_members": "ensemble members", "energy_spread_spearman": "energy: Spearman ρ(|error|, spread)",
    "forces_spread_spearman": "forces: Spearman ρ(|error|, spread)",
    "forces_miscalibration_area": "forces: miscalibration area (0: calibrated)",
}
_GROUP_TITLES = {
    "errors": "Errors (lower is better; the best run of each row in bold)",
    "uncertainty": "Uncertainty (ensembles; spreads with the fitted scale, on the evaluated subset)",
    "cost": "Cost (throughput: median over the epochs after the first)",
    "model": "Model (model.*)",
    "training": "Training (training.*)",
}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222;line-height:1.45}
h1{border-bottom:2px solid #446;padding-bottom:.3rem}h2{margin-top:2.5rem;border-bottom:1px solid #aab}
table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem}
th,td{border:1px solid #ccd;padding:.25rem .55rem;text-align:right}
th{background:#eef0f6}td:first-child,th:first-child{text-align:left}
.wide{overflow-x:auto}figure{display:inline-block;vertical-align:top;margin:.6rem;max-width:100%}
figure img{max-width:100%;border:1px solid #dde}figcaption{font-size:.85rem;color:#444}
pre{background:#f6f7fa;padding:.8rem;overflow-x:auto;font-size:.82rem}.note{color:#665;font-style:italic}
nav a{margin-right:1rem}tr.group th{text-align:left;background:#dde2ee}td.best{background:#e2f2e2}
"""


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value) -> str:
    if _missing(value):
        return ABSENT
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _label(name: str) -> str:
    """Readable name with the unit of a metric (field units), e.g. ``"energy MAE (meV)"``."""
    if parse(name) is None:
        return name.replace("_", " ")
    text, _, unit = in_field_units(name, None)
    return f"{text} ({unit})"


def metrics_rows(metrics: Mapping, weights: Mapping[str, float] | None = None) -> list[tuple]:
    """Rows ``(quantity, value in the field unit, unit)`` of a metrics dict; with the run's
    loss ``weights``, quantities of terms it did not train are marked so (ESP in V, shown in
    kcal/(mol·e) already, is left out)."""
    rows = []
    for name, value in metrics.items():
        if name.startswith("n_"):
            rows.append((name[2:].replace("_", " "), value, ""))
            continue
        p = parse(name)
        if p is None:
            rows.append((name.replace("_", " "), value, ""))
            continue
        if p["unit"] == "V":
            continue
        text, shown, unit = in_field_units(name, value)
        if weights is not None and not trained(name, weights):
            text += " (not trained: loss weight 0)"
        rows.append((text, shown, unit))
    return rows


def comparison_html(table) -> str:
    """The comparison table: one column per run, rows in groups (:func:`.compare.column_groups`),
    errors first with the lowest value of each row marked ``class="best"`` (bold)."""
    runs = table["experiment"].tolist()
    head = "<th></th>" + "".join(f"<th>{html.escape(str(r))}</th>" for r in runs)
    body = []
    for group, cols in column_groups(table.columns):
        if not cols:
            continue
        body.append(f'<tr class="group"><th colspan="{len(runs) + 1}">{html.escape(_GROUP_TITLES[group])}</th></tr>')
        for col in cols:
            values = table[col].tolist()
            if col in ERROR_COLUMNS:
                name = _label(ERROR_COLUMNS[col])
                name = name[:1].upper() + name[1:]
            elif col in COST_LABELS:
                name, scale = COST_LABELS[col]
                values = [v if _missing(v) or scale == 1 else v * scale for v in values]
            else:
                name = "errors from" if col == "metrics_source" else UNCERTAINTY_LABELS.get(col, col)
            numbers = [float(v) for v in values if not _missing(v) and isinstance(v, (int, float))]
            best = min(numbers) if col in ERROR_COLUMNS and len(numbers) > 1 else None
            cells = []
            for v in values:
                if best is not None and not _missing(v) and float(v) == best:
                    cells.append(f'<td class="best"><b>{html.escape(_fmt(v))}</b></td>')
                else:
                    cells.append(f"<td>{html.escape(_fmt(v))}</td>")
            body.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return (f'<div class="wide"><table class="comparison"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def calibration_html(section: Mapping) -> str:
    """The calibration table of an ensemble's metrics (``calibration`` section of metrics.json):
    per quantity how its spread ranks and sizes the error, raw and times the fitted scale."""
    scales = ", ".join(f"{q} × {s:.4g}" for q, s in (section.get("spread_scale") or {}).items())
    zero = {q: n for q, n in (section.get("n_zero_spread") or {}).items() if n}
    note = f" Points with zero spread left out: {zero}." if zero else ""
    return (f"<h3>Calibration of the uncertainties ({html.escape(str(section.get('members')))} members)</h3>"
            "<p>Error of the ensemble mean against the spread over its members, per structure (energy, dipole), "
            "per atom (forces) or per grid point (ESP), in eV, eV/Å, e·Å, V; raw spreads and spreads times the "
            f"scale fitted on the validation split ({html.escape(scales)}; 1 where none was fitted). "
            "Spearman ρ: ranking (1 best); miscalibration area: 0 when calibrated; NLL: lower is better."
            f"{html.escape(note)}</p>"
            + _table(*calibration_table(section)))


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    text = html.escape(caption(path.name))
    alt = html.escape(path.stem.replace("_", " "))
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(path.name)}</b>: {text}</figcaption></figure>")


def _run_figures(run_dir: Path, kind: str, tmp: Path) -> list[Path]:
    """The run's figures from ``plots/``, or made now into ``tmp`` when any is missing."""
    names = tuple(PLOT_FILES.get(kind, ()))
    if ensemble_size(RunDir(run_dir).info) > 1:
        names += UNCERTAINTY_PLOTS
    have = [run_dir / PLOTS_DIR / n for n in names]
    if names and all(p.exists() for p in have):
        return have
    out = tmp / run_dir.resolve().name
    return make_plots(run_dir, out, run_predictions(run_dir), kind)


def _run_section(run_dir: Path, summary: Mapping, tmp: Path) -> str:
    name = summary["experiment"]
    kind = RunDir(run_dir).model_type
    parts = [f'<section id="run-{html.escape(name)}"><h2>{html.escape(name)} ({html.escape(kind)})</h2>']
    train_rows = []
    for col, (name, scale) in COST_LABELS.items():
        value = summary.get(col)
        train_rows.append((name, value if _missing(value) or scale == 1 else value * scale))
    parts.append("<h3>Training cost</h3>" + _table(["", "value"], train_rows))
    weights = term_weights(run_training_config(run_dir))
    if (run_dir / METRICS_FILE).exists():
        doc = read_metrics(run_dir / METRICS_FILE)
        ckpt = doc.get("checkpoint") or {}
        parts.append(f"<h3>Metrics on the {html.escape(str(doc.get('subset')))} subset</h3>"
                     f"<p>Dataset {html.escape(str(doc.get('dataset')))}, checkpoint "
                     f"{html.escape(str(ckpt.get('which')))} (epoch {html.escape(str(ckpt.get('epoch')))}"
                     f"{', EMA weights' if ckpt.get('ema') else ''}).</p>")
        parts.append(_table(["quantity", "value", "unit"], metrics_rows(doc["metrics"], weights)))
        per_el = doc.get("per_element") or {}
        if per_el:
            cols = [k for k in next(iter(per_el.values())) if k != "Z"]
            header = ["element"] + [("atoms" if c == "n_atoms" else _label(c) if not parse(c) or trained(c, weights)
                                      else f"{_label(c)}, not trained") for c in cols]
            scale = [field_unit(c)[0] if parse(c) else 1 for c in cols]
            rows = [[el] + [None if _missing(row.get(c)) else row[c] * f for c, f in zip(cols, scale)]
                    for el, row in per_el.items()]
            parts.append("<h3>Errors per element</h3>" + _table(header, rows))
        if doc.get("calibration"):
            parts.append(calibration_html(doc["calibration"]))
    else:
        parts.append(f'<p class="note">No {METRICS_FILE} (run mmlwf evaluate); metrics from '
                     f"{html.escape(str(summary.get('metrics_source')))} are in the comparison table.</p>")
    parts.append("<h3>Figures</h3>")
    parts.extend(_figure_html(p) for p in _run_figures(run_dir, kind, tmp))
    cfg = RunDir(run_dir).config_yaml
    if cfg.exists():
        parts.append(f"<details><summary>Configuration (config.yaml)</summary><pre>{html.escape(cfg.read_text())}</pre>"
                     "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def build_report(run_dirs: Sequence[str | os.PathLike], title: str = "mmlwf report", table=None) -> str:
    """The HTML text of the report on ``run_dirs``; ``table``: their :func:`compare_runs`
    table when the caller has it already."""
    runs = [Path(r) for r in run_dirs]
    table = compare_runs(runs) if table is None else table
    summaries = table.to_dict(orient="records")
    nav = " ".join(f'<a href="#run-{html.escape(s["experiment"])}">{html.escape(s["experiment"])}</a>'
                   for s in summaries)
    intro = (f"{len(runs)} run(s); generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by mmlwf {__version__}. "
             "Errors in the units of the field: energy meV (and meV/atom), forces meV/Å (per Cartesian "
             f"component), dipole D (per component; 1 e·Å = {DEBYE_PER_E_ANGSTROM:.4f} D), charges e, "
             f"ESP kcal/(mol·e). {ABSENT}: not available (not trained, not in the data, or not recorded "
             "by the mmlwf version that trained the run).")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", f"<nav>{nav}</nav>",
            "<h2>Comparison</h2>", "<p>One column per run (also: <code>mmlwf compare</code>).</p>",
            comparison_html(table)]
    with tempfile.TemporaryDirectory(prefix="mmlwf-report-") as tmp:
        for run, summary in zip(runs, summaries):
            body.append(_run_section(run, summary, Path(tmp)))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike, title: str = "mmlwf report",
                 table=None) -> Path:
    """Write the report on ``run_dirs`` to ``path`` atomically (``table``: as for
    :func:`build_report`); returns the path."""
    text = build_report(run_dirs, title, table)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)
