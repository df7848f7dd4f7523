"""What the Snakemake ``script:`` wrappers in ``scripts/`` share: logging and the data steps.

Each wrapper is ``with log_to(snakemake.log[0]): <one call>``. Inside, stdout, stderr and
Python logging go to the terminal and to the rule's log file. Bad input and the like
(:data:`~mmlwf.errors.EXPECTED_ERRORS`: ``DataError``, ``ConfigError``, an output that cannot
be written, a diverged training, a missing or existing file) ends the job with exit status 1
and the one-line reason in both places; any other exception keeps its traceback, which also
goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .errors import EXPECTED_ERRORS, DataError

log = logging.getLogger("mmlwf")


class _Tee:
    """A text stream writing to the original stream and to the log file."""

    def __init__(self, stream, log_file) -> None:
        self._stream, self._log = stream, log_file

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # fileno, encoding, ...: those of the original stream
        return getattr(self._stream, name)


def _terminate(signum, frame):  # SIGTERM (snakemake cancel, cluster pre-emption) unwinds
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def log_to(path: str | os.PathLike, level: int = logging.INFO) -> Iterator[None]:
    """Tee stdout, stderr and logging to ``path``; expected errors exit 1 with one line.

    mmlwf's messages from ``level`` up are shown, other libraries' (JAX, orbax) from WARNING
    up only: their INFO lines (e.g. JAX probing for a TPU) are noise in a rule's log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, fh), _Tee(old_err, fh)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        old_level = log.level
        root.addHandler(handler)
        log.setLevel(level)
        old_term = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield
        except EXPECTED_ERRORS as exc:
            print(f"mmlwf: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception:
            fh.write(traceback.format_exc())  # the terminal gets it when the exception propagates
            raise
        finally:
            signal.signal(signal.SIGTERM, old_term)
            root.removeHandler(handler)
            log.setLevel(old_level)
            sys.stdout, sys.stderr = old_out, old_err


def convert_step(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    format: str = "auto",
    energy_unit: str | None = None,
    length_unit: str | None = None,
    dipole_unit: str | None = None,
    keys: Mapping[str, str] | None = None,
    esp: Mapping | None = None,
) -> Path:
    """Rule ``convert``: the sources into the packed directory ``out`` (replacing it).

    ``esp``: the settings of ESP sources (``esp_unit``, ``density`` and ``geometry`` files,
    ``points`` selection, ``total_charge``), as the dataset's config gives them.
    """
    from .convert import convert
    from .esp.points import PointSettings
    from .packed import read_manifest

    esp = dict(esp or {})
    points = dict(esp.get("points") or {})
    if "density_window" in points:
        points["density_window"] = tuple(points["density_window"])
    if esp.get("density") and "mode" not in points:
        points["mode"] = "density"
    log.info("converting %d source(s) into %s (format %s)", len(sources), out, format)
    convert(
        [str(s) for s in sources],
        out,
        fmt=None if format == "auto" else format,
        energy_unit=energy_unit,
        length_unit=length_unit,
        dipole_unit=dipole_unit,
        keys=dict(keys or {}),
        overwrite=True,
        esp_unit=esp.get("esp_unit"),
        density=[str(p) for p in esp.get("density") or []] or None,
        geometry=[str(p) for p in esp.get("geometry") or []] or None,
        points=PointSettings(**points) if points else None,
        total_charge=esp.get("total_charge"),
    )
    manifest = read_manifest(out)
    log.info("wrote %s: %d structures, %d atoms", out, manifest["n_molecules"], manifest["n_atoms"])
    return Path(out)


def validate_step(packed: str | os.PathLike, report_json: str | os.PathLike):
    """Rule ``validate``: check ``packed``; write ``report_json`` only when it has no errors.

    Every finding is logged; with errors, raises :class:`DataError` whose message carries the
    first error's one-line description.
    """
    from .validate import validate_dataset

    report = validate_dataset(packed)
    for finding in report.findings:
        log.log(logging.ERROR if finding.level == "error" else logging.WARNING, finding.one_line())
    if not report.ok:
        errors = report.errors
        raise DataError(
            f"invalid, {len(errors)} error(s); first: {errors[0].one_line()}", path=os.fspath(packed)
        )
    report.write_json(report_json)
    log.info(
        "%s: valid (%d structures, %d warning(s))", packed, report.n_molecules, len(report.warnings)
    )
    return report


def split_step(packed: str | os.PathLike, out: str | os.PathLike, settings: Mapping) -> Path:
    """Rule ``split``: ``settings`` = the dataset's ``split`` config (valid, test, seed, group_by)."""
    from .split import split_dataset

    split = split_dataset(packed, out, **dict(settings))
    log.info("wrote %s: %s", out, ", ".join(f"{k} {v}" for k, v in split.sizes().items()))
    return Path(out)


def stats_step(packed: str | os.PathLike, split: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rule ``stats``: statistics of the training split (no settings: batch shapes are the loader's)."""
    from .stats import compute_stats, write_stats

    stats = compute_stats(packed, split)
    write_stats(stats, out)
    log.info("wrote %s: %d training structures", out, stats["n_train"])
    return Path(out)


def train_step(config: Mapping, packed, split, stats, run_dir, weights: Sequence[float] | None = None) -> dict:
    """Rule ``train``: train or resume ``run_dir``; an interrupted run exits non-zero (75).

    ``packed``/``split``/``stats``: one each, or lists for a weighted mixture (``weights``).
    """
    from .training import exit_code
    from .training.runner import run_training

    packed, split, stats = list(_listed(packed)), list(_listed(split)), list(_listed(stats))
    weights = None if weights is None or len(packed) == 1 else [float(w) for w in weights]
    summary = run_training(dict(config), packed, split, stats, run_dir, weights=weights, progress=False)
    log.info("%s: %s after %d epochs (best epoch %s)", run_dir, summary["status"], summary["epochs"],
             summary["best_epoch"])
    code = exit_code(summary)
    if code:
        raise SystemExit(code)
    return summary


def evaluate_step(run_dir, packed, split, metrics, predictions, atoms, plots, *, subset: str = "test",
                  checkpoint: str = "best") -> dict:
    """Rule ``evaluate``: metrics.json, the per-structure and per-atom predictions, and the plots.

    For a mixture (lists of ``packed``/``split``) the predictions, plots and top-level metrics
    are those of the first dataset, and ``metrics.json`` adds ``per_dataset`` metrics.

    The plots are written into a temporary folder renamed to ``plots`` when complete, so an
    interrupted job leaves no partial set behind.
    """
    import shutil

    from .analysis.evaluate import evaluate_run, write_atom_predictions, write_metrics, write_predictions
    from .analysis.plots import make_plots
    from .fileio import make_temp_dir

    packed, split = list(_listed(packed)), list(_listed(split))
    doc, pred = evaluate_run(run_dir, packed[0], split[0], subset=subset, which=checkpoint)
    if len(packed) > 1:  # a mixture: metrics on each member's held-out split as well
        doc["per_dataset"] = {str(p): evaluate_run(run_dir, p, s, subset=subset, which=checkpoint)[0]["metrics"]
                              for p, s in zip(packed, split)}
    plots = Path(plots)
    tmp = make_temp_dir(f".{plots.name}.", plots.parent)
    try:
        make_plots(run_dir, tmp, pred, doc["model_type"])
        write_predictions(pred, predictions)
        write_atom_predictions(pred, atoms)
        if plots.exists():
            shutil.rmtree(plots)
        tmp.rename(plots)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_metrics(doc, metrics)  # last: its presence means the evaluation is complete
    shown = ", ".join(f"{k} {v:.4g}" for k, v in doc["metrics"].items() if k.endswith("mae_eV") or "mae" in k)
    log.info("%s on %s (%d structures): %s", run_dir, subset, doc["metrics"].get("n_structures", 0), shown)
    return doc


def report_step(run_dirs, html, table) -> Path:
    """Rule ``report``: the comparison table (CSV) and the self-contained HTML report."""
    from .analysis.compare import compare_runs, write_table
    from .analysis.report import write_report

    write_table(compare_runs(run_dirs), table)
    write_report(run_dirs, html)
    log.info("wrote %s and %s (%d runs)", html, table, len(run_dirs))
    return Path(html)


def label_step(sources: Sequence[str | os.PathLike], out: str | os.PathLike, settings: Mapping,
               cache_dir: str | os.PathLike, threads: int = 1) -> Path:
    """Rule ``label``: pyscf reference ESP, energy and dipole of the geometries in ``sources``.

    ``settings``: the label's config (format, method, basis, stride, max_structures, charges,
    points). Finished structures are cached in ``cache_dir``, so a re-run after an
    interruption resumes.
    """
    from .esp.points import PointSettings
    from .label import label_structures
    from .packed import read_manifest

    s = dict(settings)
    points = dict(s.get("points") or {})
    if "density_window" in points:
        points["density_window"] = tuple(points["density_window"])
    fmt = s.get("format", "auto")
    label_structures(
        [str(p) for p in sources], out, method=s.get("method", "HF"), basis=s.get("basis", "6-31g*"),
        fmt=None if fmt == "auto" else fmt, points=PointSettings(**points), cache_dir=cache_dir,
        max_structures=s.get("max_structures"), stride=int(s.get("stride", 1)), charges=s.get("charges"),
        threads=int(threads), overwrite=True,
    )
    m = read_manifest(out)
    lab = m["labeller"]
    log.info("wrote %s: %d structures, %d ESP points (%d computed, %d from the cache)", out, m["n_molecules"],
             m["n_grid_points"], lab["computed"], lab["cached"])
    return Path(out)


def _listed(value) -> list:
    """``[value]`` for one path, the items for a list of paths (Snakemake's named inputs)."""
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
