"""The workflow's ``config.yaml`` resolved: sweeps expanded, defaults filled in, names and settings checked.

``rules/common.smk`` calls :func:`resolve_workflow_config` once, before any job is planned, so
that a wrong config stops the workflow with one line naming the key
(``config 'experiments.x.training.learning_rate': must be > 0, got -0.1``). The sweeps are
expanded first, so that their experiments are checked, and get their defaults, like any other;
then the config is checked against the JSON schema (:mod:`mmlwf.settings.validate`, which fills
in its defaults), then the checks a schema cannot express (names, splits, units, the model and
training declarations of :mod:`mmlwf.settings`). Every default comes from the declarations in
:mod:`mmlwf.settings` (the schema is generated from them).

Sweeps (``sweeps:``) expand a grid of settings into ordinary experiments::

    sweeps:
      lr_scan:
        base: demo_physnet              # an experiment to start from (optional)
        dataset: demo                   # or any experiment key, overriding the base
        grid:
          training.learning_rate: [1.0e-3, 3.0e-4]
          model.features: [16, 32]

gives the four experiments ``lr_scan-learning_rate_0.001-features_16`` ...
``lr_scan-learning_rate_0.0003-features_32`` (the last part of each grid key, or the whole
dotted key when two grid keys end alike). Splits (``splits:``) are named split settings that a
dataset selects with ``split: <name>`` (default ``default``) or replaces with its own mapping.
An experiment's ``dataset`` is a name or a weighted mixture ``{name: weight}``; the resolved
experiment carries ``members`` (``{name: weight}``, one entry for a single dataset).

Fine-tuning: ``finetune.init_from`` names another experiment (the resolved experiment then
carries ``source``, that name, and ``init_from`` becomes its run directory, :func:`run_dir`: the
train rule takes the source's ``model.json`` as an input, so the source trains first), or a
path that exists (a run directory or an exported file). Any other value, or experiments
fine-tuning from each other in a cycle, is a one-line error. A fine-tuning experiment's
``model`` gets no ``type`` (the source's settings are used).
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import units
from .errors import ConfigError
from .settings import (
    EXPERIMENT_KEYS,
    NAME_PATTERN,
    DatasetSettings,
    EnsembleSettings,
    FinetuneSettings,
    SettingError,
    SplitSettings,
    StatsSettings,
    TrainingSettings,
    WorkflowSettings,
    defaults,
    fill_defaults,
    model_settings,
    parse,
)
from .settings.validate import check_config, load_schema, with_registered_models
from .settings.workflow import DEVICES, GRID_SECTIONS

#: the datasets' unit settings, by the quantity (:mod:`mmlwf.units`) they are a unit of
UNIT_KEYS = {key: key.removesuffix("_unit") for key in DatasetSettings.model_fields if key.endswith("_unit")}


def check_name(name: Any, where: str) -> str:
    """``name`` if it is safe as a path component, else a :class:`ConfigError` naming ``where``."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"config '{where}': name {name!r} is not allowed; names are used in paths and may hold "
            "only letters, digits, '_', '.', '-' (not starting with '.')"
        )
    return name


def _value_label(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format(value, "g")
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.+-]+", value):
        return value
    raise ConfigError(f"config '{where}': sweep value {value!r} cannot be part of an experiment name "
                      "(use numbers, booleans or simple words)")


def _set_dotted(exp: dict, key: str, value: Any, where: str) -> None:
    section, _, leaf = key.partition(".")
    if section not in GRID_SECTIONS or not re.fullmatch(r"[A-Za-z0-9_]+", leaf):
        raise ConfigError(f"config '{where}': grid key '{key}' must be "
                          f"{' or '.join(f'{s}.<key>' for s in GRID_SECTIONS)}")
    if not isinstance(exp.get(section) or {}, Mapping):
        return  # the schema names the section that is not a mapping
    exp[section] = {**(exp.get(section) or {}), leaf: copy.deepcopy(value)}


def expand_sweeps(sweeps: Mapping, experiments: Mapping) -> dict[str, dict]:
    """The experiments that ``sweeps`` define, by name, in grid order (as written: the checks and
    defaults come afterwards, as for the other experiments). A sweep or base experiment that is
    not a mapping is skipped (the schema names it)."""
    out: dict[str, dict] = {}
    for sweep, spec in sweeps.items():
        where = f"sweeps.{sweep}"
        check_name(sweep, where)
        if not isinstance(spec, Mapping):
            continue
        spec = dict(spec)
        base_name = spec.pop("base", None)
        grid = spec.pop("grid", None)
        if base_name is not None:
            if not isinstance(base_name, str) or base_name not in experiments:
                known = ", ".join(experiments) or "none"
                raise ConfigError(f"config '{where}.base': {base_name!r} is not an experiment (known: {known})")
            if not isinstance(experiments[base_name], Mapping):
                continue
            base = copy.deepcopy(dict(experiments[base_name]))
        else:
            base = {}
        for key, value in spec.items():
            if key in GRID_SECTIONS and isinstance(value, Mapping) and isinstance(base.get(key, {}), Mapping):
                base[key] = {**(base.get(key) or {}), **copy.deepcopy(dict(value))}
            else:
                base[key] = copy.deepcopy(value)
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError(f"config '{where}.grid': give at least one key with a list of values")
        keys = list(grid)
        leaves = [k.rpartition(".")[2] for k in keys]
        labels = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)]
        for key in keys:
            _set_dotted({}, key, None, f"{where}.grid.{key}")
            if not isinstance(grid[key], list) or not grid[key]:
                raise ConfigError(f"config '{where}.grid.{key}': expected a non-empty list of values")
        for values in itertools.product(*(grid[k] for k in keys)):
            exp = copy.deepcopy(base)
            parts = [sweep]
            for key, label, value in zip(keys, labels, values):
                _set_dotted(exp, key, value, f"{where}.grid.{key}")
                parts.append(f"{label}_{_value_label(value, f'{where}.grid.{key}')}")
            name = "-".join(parts)
            if name in out:
                raise ConfigError(f"config '{where}.grid': two grid points give the experiment name '{name}'")
            if "dataset" not in exp:
                raise ConfigError(f"config '{where}': no dataset (give 'dataset' or a 'base' experiment)")
            out[name] = exp
    return out


def _check_split(split: Mapping, where: str) -> dict:
    """The split settings with their defaults filled in, checked by :class:`SplitSettings`."""
    split = {**defaults(SplitSettings), **dict(split)}
    _declared(functools.partial(parse, SplitSettings), split, where)
    return split


def _check_units(ds: Mapping, where: str) -> None:
    for key, kind in UNIT_KEYS.items():
        if ds.get(key) is not None:
            try:
                units.factor(kind, str(ds[key]))
            except ConfigError as exc:
                raise ConfigError(f"config '{where}.{key}': {exc}") from None


def _declared(check, values: Any, where: str):
    """``check(values)`` (a declaration's parse), its :class:`SettingError` as one line under ``where``."""
    try:
        return check(values)
    except SettingError as exc:
        raise ConfigError(f"config '{'.'.join(k for k in (where, exc.key) if k)}': {exc.problem}") from None


def _check_experiment(name: str, exp: dict, datasets: Mapping) -> dict:
    where = f"experiments.{name}"
    dataset = exp.get("dataset")
    members = dict(dataset) if isinstance(dataset, Mapping) else {dataset: 1.0}
    if not members:
        raise ConfigError(f"config '{where}.dataset': an empty mixture")
    for member, weight in members.items():
        if member not in datasets:
            key = f"{where}.dataset" + (f".{member}" if isinstance(dataset, Mapping) else "")
            raise ConfigError(f"config '{key}': {member!r} is not a dataset "
                              f"(known: {', '.join(datasets) or 'none'})")
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise ConfigError(f"config '{where}.dataset.{member}': mixture weight {weight!r} must be > 0")
    exp["members"] = {str(k): float(v) for k, v in members.items()}
    if exp["device"] not in DEVICES:
        raise ConfigError(f"config '{where}.device': {exp['device']!r} is not {' or '.join(DEVICES)}")
    model = _declared(model_settings, exp["model"], f"{where}.model")
    _declared(functools.partial(parse, TrainingSettings), exp["training"], f"{where}.training")
    finetune = dict(exp.get("finetune") or {})
    _declared(functools.partial(parse, FinetuneSettings), finetune, f"{where}.finetune")
    exp["finetune"] = finetune
    # a fine-tuning experiment's model settings are its source's: only those given are compared with them
    given = {} if finetune.get("init_from") is not None else {"type": model.type}
    exp["model"] = {**given, **dict(exp["model"] or {})}
    exp["training"] = dict(exp["training"] or {})
    _declared(functools.partial(parse, EnsembleSettings), exp.get("ensemble"), f"{where}.ensemble")
    exp["ensemble"] = dict(exp.get("ensemble") or {})
    return exp


def _swept(config: dict) -> dict[str, dict]:
    """The experiments of the config's sweeps, added to its ``experiments`` (as written)."""
    sweeps, experiments = config.get("sweeps"), config.get("experiments")
    if not (isinstance(sweeps, Mapping) and sweeps and isinstance(experiments or {}, Mapping)):
        return {}
    swept = expand_sweeps(sweeps, experiments or {})
    for name in swept:
        if name in (experiments or {}):
            raise ConfigError(f"config 'sweeps': the swept experiment '{name}' is also defined in 'experiments'")
    config["experiments"] = {**(experiments or {}), **swept}
    return swept


def resolve_workflow_config(config: Mapping, schema: Mapping | str | Path | None = None) -> dict:
    """A checked copy of the workflow config with sweeps expanded and defaults filled in.

    With ``schema`` (the schema or its file, ``schemas/config.schema.yaml``), the config is
    checked against it, which fills in the defaults; without, the defaults come straight from
    the declarations (:class:`~mmlwf.settings.WorkflowSettings`). Datasets get their split
    settings filled in (``split`` as a mapping); experiments gain the sweeps' experiments.
    Raises :class:`ConfigError` naming the key.
    """
    cfg = copy.deepcopy(dict(config))
    swept = _swept(cfg)
    try:
        return _resolved(cfg, schema)
    except ConfigError as exc:
        name, where = getattr(exc, "experiment", None), getattr(exc, "where", ())
        if name is None and len(where) > 1 and where[0] == "experiments":
            name = where[1]  # found by the schema
        if name not in swept:
            raise
        sweep = max((s for s in cfg["sweeps"] if name.startswith(f"{s}-")), key=len)
        raise ConfigError(f"{exc} (an experiment of sweep '{sweep}')") from None


def _resolved(cfg: dict, schema: Mapping | str | Path | None) -> dict:
    """The checks of :func:`resolve_workflow_config` on ``cfg`` (changed in place)."""
    if schema is not None:
        check_config(cfg, schema if isinstance(schema, Mapping) else with_registered_models(load_schema(schema)))
    else:
        fill_defaults(WorkflowSettings, cfg)
    for name in dict(cfg.get("labels") or {}):
        check_name(name, f"labels.{name}")
    datasets = dict(cfg.get("datasets") or {})
    splits = {"default": {}, **dict(cfg.get("splits") or {})}
    for name, split in splits.items():
        check_name(name, f"splits.{name}")
        splits[name] = _check_split(split or {}, f"splits.{name}")
    for name, ds in datasets.items():
        check_name(name, f"datasets.{name}")
        ds = dict(ds)
        split = ds.get("split", "default")
        if isinstance(split, str):
            if split not in splits:
                raise ConfigError(f"config 'datasets.{name}.split': {split!r} is not in 'splits' "
                                  f"(known: {', '.join(splits)})")
            ds["split"] = dict(splits[split])
        else:
            ds["split"] = _check_split(split, f"datasets.{name}.split")
        _check_units(ds, f"datasets.{name}")
        # element energies: a keyword, numbers per element or a file name, checked before it becomes a path
        _declared(functools.partial(parse, StatsSettings), ds.get("stats") or {}, f"datasets.{name}.stats")
        datasets[name] = ds
    experiments = dict(cfg.get("experiments") or {})
    for name in list(experiments):
        check_name(name, f"experiments.{name}")
        try:
            experiments[name] = _check_experiment(name, dict(experiments[name]), datasets)
        except ConfigError as exc:
            exc.experiment = name
            raise
    _link_sources(experiments)
    cfg["splits"], cfg["datasets"], cfg["experiments"] = splits, datasets, experiments
    return cfg


def run_dir(experiment: str) -> str:
    """The run directory of an experiment (the train rule's output directory)."""
    return f"results/runs/{experiment}"


def _link_sources(experiments: dict) -> None:
    """Resolve each ``finetune.init_from`` naming an experiment (``source``; ``init_from`` its
    :func:`run_dir`); one-line ConfigError for a name that is neither an experiment nor an
    existing path, and for a cycle."""
    for name, exp in experiments.items():
        target = (exp.get("finetune") or {}).get("init_from")
        if target is None:
            continue
        key = f"config 'experiments.{name}.finetune.init_from'"
        if target in experiments:
            if target == name:
                raise ConfigError(f"{key}: an experiment cannot fine-tune itself")
            exp["source"], exp["finetune"] = target, {**exp["finetune"], "init_from": run_dir(target)}
        elif not Path(target).exists():
            raise ConfigError(f"{key}: {target!r} is neither an experiment (known: {', '.join(experiments)}) nor an "
                              "existing run directory or exported model")
    for name, exp in experiments.items():
        seen, at = [name], exp.get("source")
        while at is not None:
            if at in seen:
                cycle = " -> ".join([*seen[seen.index(at):], at])
                raise ConfigError(f"config 'experiments.{name}.finetune.init_from': a cycle of fine-tuning ({cycle})")
            seen.append(at)
            at = experiments[at].get("source")
