"""The self-contained HTML report of one or many runs: ``mmlwf report RUN... -o report.html``.

One file, no external references: the CSS is inline and every figure is a base64 PNG data
URI, so the page can be mailed, archived or opened offline. Content: the comparison table
(:mod:`.compare`), and per run its metrics (overall and per element), training summary,
figures with captions (:mod:`.captions`) and configuration. Figures come from the run's
``plots/`` folder; a run without them gets them made into a temporary folder.
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

from ase.units import Debye

from .. import __version__
from ..fileio import atomic_write
from .captions import caption
from .compare import compare_runs
from .evaluate import METRICS_FILE, PLOTS_DIR, model_type, read_metrics, run_predictions
from .plots import PLOT_FILES, make_plots

#: metric name suffix -> (unit shown, factor and unit of a second, field-customary column)
_UNITS = {
    "_eV": ("eV", 1e3, "meV"),
    "_eV_per_A": ("eV/Å", 1e3, "meV/Å"),
    "_eA": ("e·Å", 1.0 / Debye, "D"),  # ase.units.Debye: 1 D in e·Å
    "_e": ("e", None, None),
    "_V": ("V", None, None),
    "_kcal_per_mol_e": ("kcal/(mol·e)", None, None),
}
_STATS = {"mae": "MAE", "rmse": "RMSE", "max_abs_error": "max |error|"}

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
nav a{margin-right:1rem}
"""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _split_unit(name: str) -> tuple[str, str, float | None, str | None]:
    """``("energy MAE", "eV", 1e3, "meV")`` from ``"energy_mae_eV"``."""
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if name.endswith(suffix):
            unit, factor, alt = _UNITS[suffix]
            base = name[: -len(suffix)]
            for stat, shown in _STATS.items():
                if base.endswith("_" + stat):
                    base = f"{base[: -len(stat) - 1]} {shown}"
            return base.replace("_", " "), unit, factor, alt
    return name.replace("_", " "), "", None, None


def metrics_rows(metrics: Mapping) -> list[tuple]:
    """Rows ``(quantity, value, unit, value in a customary unit, that unit)`` of a metrics dict."""
    rows = []
    for name, value in metrics.items():
        if name.startswith("n_"):
            rows.append((name[2:].replace("_", " "), value, "", None, ""))
            continue
        label, unit, factor, alt = _split_unit(name)
        rows.append((label, value, unit, None if factor is None else value * factor, alt or ""))
    return rows


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    text = html.escape(caption(path.name))
    alt = html.escape(path.stem.replace("_", " "))
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(path.name)}</b>: {text}</figcaption></figure>")


def _run_figures(run_dir: Path, kind: str, tmp: Path) -> list[Path]:
    """The run's figures from ``plots/``, or made now into ``tmp`` when any is missing."""
    names = PLOT_FILES.get(kind, ())
    have = [run_dir / PLOTS_DIR / n for n in names]
    if names and all(p.exists() for p in have):
        return have
    out = tmp / run_dir.resolve().name
    return make_plots(run_dir, out, run_predictions(run_dir), kind)


def _run_section(run_dir: Path, summary: Mapping, tmp: Path) -> str:
    name = summary["experiment"]
    kind = model_type(run_dir)
    parts = [f'<section id="run-{html.escape(name)}"><h2>{html.escape(name)} ({html.escape(kind)})</h2>']
    train_rows = [("epochs", summary.get("epochs")), ("training time (s)", summary.get("training_time_s")),
                  ("parameters", summary.get("n_params"))]
    parts.append("<h3>Training</h3>" + _table(["", "value"], train_rows))
    if (run_dir / METRICS_FILE).exists():
        doc = read_metrics(run_dir / METRICS_FILE)
        ckpt = doc.get("checkpoint") or {}
        parts.append(f"<h3>Metrics on the {html.escape(str(doc.get('subset')))} subset</h3>"
                     f"<p>Dataset {html.escape(str(doc.get('dataset')))}, checkpoint "
                     f"{html.escape(str(ckpt.get('which')))} (epoch {html.escape(str(ckpt.get('epoch')))}"
                     f"{', EMA weights' if ckpt.get('ema') else ''}).</p>")
        parts.append(_table(["quantity", "value", "unit", "value", "unit"], metrics_rows(doc["metrics"])))
        per_el = doc.get("per_element") or {}
        if per_el:
            cols = [k for k in next(iter(per_el.values())) if k != "Z"]
            header = ["element"] + [" ".join(_split_unit(c)[:2]) if c != "n_atoms" else "atoms" for c in cols]
            parts.append("<h3>Errors per element</h3>"
                         + _table(header, [[el] + [row.get(c) for c in cols] for el, row in per_el.items()]))
    else:
        parts.append(f'<p class="note">No {METRICS_FILE} (run mmlwf evaluate); metrics from '
                     f"{html.escape(str(summary.get('metrics_source')))} are in the comparison table.</p>")
    parts.append("<h3>Figures</h3>")
    parts.extend(_figure_html(p) for p in _run_figures(run_dir, kind, tmp))
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        parts.append(f"<details><summary>Configuration (config.yaml)</summary><pre>{html.escape(cfg.read_text())}</pre>"
                     "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def build_report(run_dirs: Sequence[str | os.PathLike], title: str = "mmlwf report") -> str:
    """The HTML text of the report on ``run_dirs``."""
    runs = [Path(r) for r in run_dirs]
    table = compare_runs(runs)
    summaries = table.to_dict(orient="records")
    nav = " ".join(f'<a href="#run-{html.escape(s["experiment"])}">{html.escape(s["experiment"])}</a>'
                   for s in summaries)
    intro = (f"{len(runs)} run(s); generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by mmlwf {__version__}. "
             "Units: energy eV, force eV/Å, dipole e·Å, charge e, potential V; the metrics tables add meV, "
             "meV/Å and Debye.")
    comparison = [[col, *table[col].tolist()] for col in table.columns if col != "experiment"]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", f"<nav>{nav}</nav>",
            "<h2>Comparison</h2>", "<p>One column per run (also: <code>mmlwf compare</code>).</p>",
            _table(["", *table["experiment"].tolist()], comparison)]
    with tempfile.TemporaryDirectory(prefix="mmlwf-report-") as tmp:
        for run, summary in zip(runs, summaries):
            body.append(_run_section(run, summary, Path(tmp)))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike, title: str = "mmlwf report") -> Path:
    """Write the report on ``run_dirs`` to ``path`` atomically; returns the path."""
    text = build_report(run_dirs, title)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)
