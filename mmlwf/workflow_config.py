"""The workflow's ``config.yaml`` after schema validation: sweeps expanded, names and settings checked.

``rules/common.smk`` calls :func:`resolve_workflow_config` once, before any job is planned, so
that a wrong config stops the workflow with one line naming the key
(``config 'experiments.x.training.learning_rate': must be > 0, got -0.1``): first against the
JSON schema (:mod:`mmlwf.settings.validate`, which fills in its defaults), then the checks a
schema cannot express (names, splits, units, the model and training declarations of
:mod:`mmlwf.settings`, sweeps).

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
from .settings import SettingError, TrainingSettings, model_settings, parse
from .settings.validate import check_config, load_schema, with_registered_models

#: names become path components: no separators, no leading dot
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
#: the datasets' unit settings, by the quantity (:mod:`mmlwf.units`) they are a unit of
UNIT_KEYS = {"energy_unit": "energy", "length_unit": "length", "dipole_unit": "dipole", "esp_unit": "esp"}
SPLIT_DEFAULTS = {"valid": 0.1, "test": 0.1, "seed": 0, "group_by": "none"}
EXPERIMENT_DEFAULTS = {"device": "cpu", "threads": 2, "model": {}, "training": {}}
#: experiment keys a sweep may set besides ``base`` and ``grid``
EXPERIMENT_KEYS = ("dataset", "device", "threads", "model", "training")


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
    if section not in ("model", "training") or not re.fullmatch(r"[A-Za-z0-9_]+", leaf):
        raise ConfigError(f"config '{where}': grid key '{key}' must be model.<key> or training.<key>")
    exp.setdefault(section, {})[leaf] = copy.deepcopy(value)


def expand_sweeps(sweeps: Mapping, experiments: Mapping) -> dict[str, dict]:
    """The experiments that ``sweeps`` define, by name, in grid order."""
    out: dict[str, dict] = {}
    for sweep, spec in sweeps.items():
        where = f"sweeps.{sweep}"
        check_name(sweep, where)
        spec = dict(spec)
        base_name = spec.pop("base", None)
        grid = spec.pop("grid", None)
        if base_name is not None:
            if base_name not in experiments:
                known = ", ".join(experiments) or "none"
                raise ConfigError(f"config '{where}.base': {base_name!r} is not an experiment (known: {known})")
            base = copy.deepcopy(dict(experiments[base_name]))
        else:
            base = {}
        for key, value in spec.items():
            if key in ("model", "training"):
                base[key] = {**base.get(key, {}), **copy.deepcopy(dict(value))}
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
    split = {**SPLIT_DEFAULTS, **dict(split)}
    fractions = [split[k] for k in ("valid", "test") if 0 < split[k] < 1]
    if sum(fractions) >= 1:
        raise ConfigError(f"config '{where}': valid + test fractions ({' + '.join(map(str, fractions))}) "
                          "leave no training data; they must sum to less than 1")
    for key in ("valid", "test"):
        if split[key] >= 1 and split[key] != int(split[key]):
            raise ConfigError(f"config '{where}.{key}': {split[key]} is neither a fraction (< 1) nor a count")
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
    exp = {**copy.deepcopy(EXPERIMENT_DEFAULTS), **exp}
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
    if exp["device"] not in ("cpu", "gpu"):
        raise ConfigError(f"config '{where}.device': {exp['device']!r} is not cpu or gpu")
    model = _declared(model_settings, exp["model"], f"{where}.model")
    _declared(functools.partial(parse, TrainingSettings), exp["training"], f"{where}.training")
    exp["model"] = {"type": model.type, **dict(exp["model"] or {})}
    exp["training"] = dict(exp["training"] or {})
    return exp


def resolve_workflow_config(config: Mapping, schema: Mapping | str | Path | None = None) -> dict:
    """A checked copy of the workflow config with sweeps expanded.

    With ``schema`` (the schema or its file), the config is first checked against it and its
    defaults are filled in. Datasets get their split settings filled in (``split`` as a
    mapping); experiments gain the sweeps' experiments and their defaults. Raises
    :class:`ConfigError` naming the key.
    """
    cfg = copy.deepcopy(dict(config))
    if schema is not None:
        check_config(cfg, schema if isinstance(schema, Mapping) else with_registered_models(load_schema(schema)))
    for name in dict(cfg.get("labels") or {}):
        check_name(name, f"labels.{name}")
    datasets = dict(cfg.get("datasets") or {})
    splits = {"default": dict(SPLIT_DEFAULTS), **dict(cfg.get("splits") or {})}
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
        datasets[name] = ds
    experiments = dict(cfg.get("experiments") or {})
    swept = expand_sweeps(dict(cfg.get("sweeps") or {}), experiments)
    for name in swept:
        if name in experiments:
            raise ConfigError(f"config 'sweeps': the swept experiment '{name}' is also defined in 'experiments'")
    experiments.update(swept)
    for name in list(experiments):
        check_name(name, f"experiments.{name}")
        try:
            experiments[name] = _check_experiment(name, dict(experiments[name]), datasets)
        except ConfigError as exc:
            if name not in swept:
                raise
            sweep = max((s for s in cfg["sweeps"] if name.startswith(f"{s}-")), key=len)
            raise ConfigError(f"{exc} (an experiment of sweep '{sweep}')") from None
    cfg["splits"], cfg["datasets"], cfg["experiments"] = splits, datasets, experiments
    return cfg
