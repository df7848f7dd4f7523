"""Data steps: convert, label, validate, split, stats (see :mod:`mmlwf.steps`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..convert import ConvertOptions
from ..errors import ConfigError, DataError
from ._common import Out, log

if TYPE_CHECKING:
    from ..esp.points import PointSettings
    from ..validate import ValidationReport

#: A setting's name in the workflow config where it differs from the library's argument.
_CONFIG_NAMES = {"fmt": "format"}
#: The dataset settings :func:`convert_options` reads (the rest of a dataset's entry is not
#: the converter's): the :class:`~mmlwf.convert.ConvertOptions` fields, in config spelling.
CONVERT_SETTINGS = tuple(_CONFIG_NAMES.get(f.name, f.name) for f in dataclasses.fields(ConvertOptions))


def point_settings(given: Mapping[str, Any] | None, *, density: bool = False,
                   always: bool = True) -> "PointSettings | None":
    """:class:`~mmlwf.esp.points.PointSettings` from the settings ``given`` (None values
    left out: the defaults). The mode defaults to ``density`` when there are ``density``
    cubes, else ``shell``. None when nothing is given and not ``always`` (the reader's own
    choice)."""
    from ..esp.points import PointSettings

    given = {k: v for k, v in dict(given or {}).items() if v is not None}
    if not given and not always:
        return None
    given.setdefault("mode", "density" if density else "shell")
    return PointSettings(**given)


def _library_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Config spelling -> keyword arguments: ``format`` -> ``fmt`` (``auto`` -> None)."""
    out = {}
    for key, value in settings.items():
        if key == "format":
            key, value = "fmt", None if value == "auto" else value
        out[key] = value
    return out


def convert_options(settings: Mapping[str, Any]) -> ConvertOptions:
    """The :class:`~mmlwf.convert.ConvertOptions` of a dataset's settings (``format``,
    units, ``keys``, and for ESP sources ``esp_unit``, ``density``, ``geometry``, ``points``
    as a mapping, ``total_charge``); settings absent or None keep their defaults."""
    kwargs = _library_kwargs({k: v for k, v in settings.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"unknown conversion setting(s) {', '.join(unknown)} (known: {', '.join(CONVERT_SETTINGS)})")
    for name in ("density", "geometry", "esp_values"):
        if name in kwargs:
            kwargs[name] = [str(p) for p in kwargs[name]] or None
    if isinstance(kwargs.get("keys"), Mapping):
        kwargs["keys"] = dict(kwargs["keys"])
    if "points" in kwargs and isinstance(kwargs["points"], Mapping):
        kwargs["points"] = point_settings(kwargs["points"], density=bool(kwargs.get("density")), always=False)
    return ConvertOptions(**kwargs)


def convert_step(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 options: ConvertOptions | None = None, *, overwrite: bool = False, progress: bool = False,
                 tell: Out = log) -> Path:
    """``mmlwf convert`` / rule ``convert``: the sources into the packed directory ``out``."""
    from ..convert import convert
    from ..packed import read_manifest

    convert([str(s) for s in sources], out, options, overwrite=overwrite, progress=progress)
    m = read_manifest(out)
    tell.info(f"wrote {out}: {m['n_molecules']} structures, {m['n_atoms']} atoms")
    return Path(out)


def label_step(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *,
               cache_dir: str | os.PathLike | None = None, threads: int | None = None, overwrite: bool = False,
               progress: bool = False, tell: Out = log, **settings: Any) -> Path:
    """``mmlwf label`` / rule ``label``: pyscf reference ESP, energy and dipole of ``sources``.

    ``settings``: :func:`mmlwf.label.label_structures`'s keyword arguments in config spelling
    (``format``, ``method``, ``basis``, ``stride``, ``max_structures``, ``charges``,
    ``points`` as a mapping or :class:`~mmlwf.esp.points.PointSettings`, ...); absent ones
    keep that function's defaults. Finished structures are cached in ``cache_dir``, so a
    re-run after an interruption resumes.
    """
    from ..label import label_structures
    from ..packed import read_manifest

    kwargs = _library_kwargs(settings)
    if not hasattr(kwargs.get("points"), "as_dict"):  # a mapping (or None): the defaults filled in
        kwargs["points"] = point_settings(kwargs.get("points"))
    label_structures([str(p) for p in sources], out, cache_dir=cache_dir, threads=threads, overwrite=overwrite,
                     progress=progress, **kwargs)
    m = read_manifest(out)
    lab = m["labeller"]
    tell.info(f"wrote {out}: {m['n_molecules']} structures, {m['n_grid_points']} ESP points "
              f"({lab['computed']} computed, {lab['cached']} from the cache)")
    return Path(out)


def validate_step(packed: str | os.PathLike, report_json: str | os.PathLike | None = None, *,
                  check_checksums: bool = True, require_valid: bool = False,
                  tell: Out = log) -> "ValidationReport":
    """``mmlwf validate`` / rule ``validate``: check ``packed``, one line per finding.

    ``report_json``: where the findings go as JSON. With ``require_valid`` (the rule, whose
    output means "valid"), a dataset with errors raises :class:`~mmlwf.errors.DataError`
    carrying the first error's line, and ``report_json`` is written only for a valid one.
    """
    from ..validate import validate_dataset

    report = validate_dataset(packed, check_checksums=check_checksums)
    if report_json is not None and (report.ok or not require_valid):
        report.write_json(report_json)
    for finding in report.findings:
        (tell.error if finding.level == "error" else tell.warning)(f"{packed}: {finding.one_line()}")
    if not report.ok:
        if require_valid:
            errors = report.errors
            raise DataError(f"invalid, {len(errors)} error(s); first: {errors[0].one_line()}",
                            path=os.fspath(packed))
        return report
    tell.info(f"{packed}: valid ({report.n_molecules} structures, {len(report.warnings)} warning(s))")
    return report


def split_step(packed: str | os.PathLike, out: str | os.PathLike, *, tell: Out = log, **settings: Any) -> Path:
    """``mmlwf split`` / rule ``split``: ``settings`` = :func:`mmlwf.split.split_dataset`'s
    (valid, test, seed, group_by); absent ones keep its defaults."""
    from ..split import split_dataset

    split = split_dataset(packed, out, **settings)
    tell.info(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in split.sizes().items()))
    return Path(out)


def stats_step(packed: str | os.PathLike, split: str | os.PathLike, out: str | os.PathLike, *,
               element_energies: str | os.PathLike | Mapping[str, float] | None = None, tell: Out = log) -> Path:
    """``mmlwf stats`` / rule ``stats``: statistics of the training split and the element
    reference energies ``element_energies`` (a file of isolated atoms, ``{symbol: eV}``, ``fit``
    or ``auto``; None: :func:`mmlwf.stats.compute_stats`'s default). Batch shapes are the
    training loader's, see :mod:`mmlwf.stats`."""
    from ..stats import compute_stats, write_stats

    kwargs = {} if element_energies is None else {"element_energies": element_energies}
    stats = compute_stats(packed, split, **kwargs)
    write_stats(stats, out)
    source = stats.get("element_energies_source")
    where = "" if source is None else f"; element energies: {source['kind']}"
    tell.info(f"wrote {out}: {stats['n_train']} training structures{where}")
    return Path(out)


__all__ = ["CONVERT_SETTINGS", "convert_options", "convert_step", "label_step", "point_settings", "split_step",
           "stats_step", "validate_step"]
