"""Training configuration: a YAML file with a ``model:``, a ``training:`` and optional
``ensemble:`` and ``finetune:`` sections.

``model:`` is a free mapping handed to the caller's ``build_model(config)`` (which checks it
against the model's declaration in :mod:`mmlwf.settings.models`); ``training:`` is checked
against :class:`TrainingConfig` (declared in :mod:`mmlwf.settings.training`, whose fields carry
their defaults, bounds and meaning): no setting is restated here; ``ensemble:`` likewise
against :class:`~mmlwf.settings.EnsembleSettings` (absent: one model), ``finetune:`` against
:class:`~mmlwf.settings.FinetuneSettings` (absent: random initialisation).
:func:`load_config` reads the file, applies ``section.key=value`` overrides (values parsed by
``yaml.safe_load``), and rejects unknown keys and bad values with a one-line
:class:`~mmlwf.errors.ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import settings
from ..errors import ConfigError, did_you_mean
from ..settings import EnsembleSettings, FinetuneSettings, SettingError, TrainingSettings

SECTIONS = ("model", "training", "ensemble", "finetune")
#: the sections checked against a declaration (their defaults filled in)
DECLARED_SECTIONS = {"training": TrainingSettings, "ensemble": EnsembleSettings, "finetune": FinetuneSettings}

#: training keys that may change between a run and its resume (they do not change the
#: epochs already done; every other key must match the stored config). The span of a
#: decaying schedule is fixed when the run starts and kept in its checkpoints
#: (:mod:`.schedule`): changing ``max_epochs`` or ``max_time_min`` on resume changes when
#: the run stops, not its learning rates. ``data_parallel`` (or another number of local
#: devices) changes what a step is for the rest of the run (see :mod:`.parallel`).
RESUMABLE_CHANGES = ("max_epochs", "max_time_min", "early_stopping_patience", "checkpoint_every",
                     "checkpoint_interval_min", "data_parallel", "tensorboard")

#: the ``training:`` section, declared in :mod:`mmlwf.settings.training`
TrainingConfig = TrainingSettings


def describe(section: str = "training") -> str:
    """A text table of the settings of ``section`` (``training``, or a model type such as
    ``physnet``): their defaults and meaning, from their declarations in :mod:`mmlwf.settings`."""
    if section == "training":
        return settings.describe(TrainingSettings, "training")
    if section in settings.MODELS:
        return settings.describe(settings.MODELS[section], f"model ({section})")
    known = ("training", *settings.MODELS)
    raise ConfigError(f"no settings section '{section}'{did_you_mean(section, known)} (known: {', '.join(known)})")


def _unknown(key: str, known: Sequence[str]) -> ConfigError:
    section, _, name = key.rpartition(".")
    return ConfigError(f"unknown setting '{key}'{did_you_mean(name, known, f'{section}.' if section else '')}")


def _section(name: str, values: Mapping[str, Any] | None):
    """The checked settings of the declared section ``name`` (:data:`DECLARED_SECTIONS`;
    missing keys take their defaults), a bad key or value as one-line :class:`ConfigError`."""
    try:
        return settings.parse(DECLARED_SECTIONS[name], values)
    except SettingError as exc:
        if exc.known is not None:
            raise _unknown(f"{name}.{exc.key}", exc.known) from None
        raise ConfigError(f"{name}.{exc.key} {exc.problem}") from None


def training_config(values: Mapping[str, Any] | None = None) -> TrainingConfig:
    """A checked :class:`TrainingConfig` from a mapping (missing keys take their defaults)."""
    return _section("training", values)


def ensemble_config(values: Mapping[str, Any] | None = None) -> EnsembleSettings:
    """A checked :class:`~mmlwf.settings.EnsembleSettings` (missing keys: their defaults)."""
    return _section("ensemble", values)


def finetune_config(values: Mapping[str, Any] | None = None) -> FinetuneSettings:
    """A checked :class:`~mmlwf.settings.FinetuneSettings` (missing keys: their defaults)."""
    return _section("finetune", values)


@dataclass(frozen=True)
class Config:
    """A resolved configuration: the model mapping, the checked training, ensemble and finetune
    settings. A fine-tuning run (``finetune.init_from`` set) trains at ``finetune.learning_rate``:
    it replaces ``training.learning_rate`` here, so the optimiser, the schedule and ``config.yaml``
    all see the rate used."""

    model: dict
    training: TrainingConfig
    ensemble: EnsembleSettings = EnsembleSettings()
    finetune: FinetuneSettings = FinetuneSettings()

    def __post_init__(self) -> None:
        lr = self.finetune.learning_rate
        if self.finetune.init_from is not None and self.training.learning_rate != lr:
            object.__setattr__(self, "training", training_config({**self.training.model_dump(), "learning_rate": lr}))

    @property
    def members(self) -> int:
        """Models with their own parameters trained together (the parameters' leading member
        axis): ``ensemble.size`` of a full ensemble; 1 for a single model and for a shallow
        ensemble (one parameter set with output heads: :attr:`ensemble_size`)."""
        return int(self.ensemble.size) if self.ensemble.kind == "full" else 1

    @property
    def ensemble_size(self) -> int:
        """Members whose spread is the uncertainty (``ensemble.size``: models or heads; 1: none)."""
        return int(self.ensemble.size)

    @property
    def shallow(self) -> bool:
        """A shallow ensemble (output heads of one model: ``ensemble.kind: shallow``, size > 1)."""
        return self.ensemble.kind == "shallow" and self.ensemble_size > 1

    def to_dict(self) -> dict:
        """The sections; ``ensemble`` only for an ensemble and ``finetune`` only for a fine-tuning
        run (other configs read as they did before these sections existed)."""
        out = {"model": dict(self.model), "training": self.training.model_dump()}
        if self.ensemble_size > 1:  # a full ensemble's without the shallow-only settings (as before they existed)
            out["ensemble"] = self.ensemble.model_dump(exclude=None if self.shallow else EnsembleSettings.SHALLOW_ONLY)
        if self.finetune.init_from is not None:
            out["finetune"] = self.finetune.model_dump()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def replace(self, **training_changes) -> Config:
        """A copy with some training settings changed (checked)."""
        return Config(dict(self.model), training_config({**self.training.model_dump(), **training_changes}),
                      self.ensemble, self.finetune)


def _set(tree: dict, path: list[str], value: Any, full: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{full}': '{part}' is not a mapping")
        node = nxt
    node[path[-1]] = value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``data`` with ``section.key[.sub]=value`` overrides applied (values via yaml.safe_load)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        key, eq, text = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override '{item}': the key must name a section and a setting (e.g. training.max_epochs)")
        if parts[0] not in SECTIONS:
            raise _unknown(parts[0], SECTIONS)
        declared = DECLARED_SECTIONS.get(parts[0])
        if declared is not None and (len(parts) != 2 or parts[1] not in declared.model_fields):
            raise _unknown(key, list(declared.model_fields))
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({' '.join(str(exc).split())})")
        section = data.setdefault(parts[0], {})
        if section is None:
            section = data[parts[0]] = {}
        _set(section, parts[1:], value, key)
    return data


def config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> Config:
    """A checked :class:`Config` from a mapping with ``model``, ``training`` (and ``ensemble``) sections."""
    data = dict(data or {})
    for key in data:
        if key not in SECTIONS:
            raise _unknown(str(key), SECTIONS)
    for key in SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"section '{key}' must be a mapping, got {type(data[key]).__name__}")
    data = apply_overrides({k: v or {} for k, v in data.items()}, overrides)
    ensemble = ensemble_config(data.get("ensemble") or {})
    return Config(output_heads(dict(data.get("model") or {}), ensemble), training_config(data.get("training") or {}),
                  ensemble, finetune_config(data.get("finetune") or {}))


def output_heads(model: dict, ensemble: EnsembleSettings) -> dict:
    """``model`` (a ``model:`` section) with ``output_heads`` resolved from a shallow ensemble
    (``ensemble.size``; the one place it is set); a single model or a full ensemble keeps the
    section as given. ConfigError for a shallow ensemble of a kind without output heads, or an
    ``output_heads`` set by hand that disagrees."""
    heads = int(ensemble.size) if ensemble.kind == "shallow" else 1
    if heads > 1:
        from ..models.registry import kind_of_config

        kind = kind_of_config(model)
        if not kind.heads_forward:
            raise ConfigError(f"ensemble.kind: shallow needs a model with output heads (physnet); model.type "
                              f"{kind.name} has none (use ensemble.kind: full)")
    given = model.get("output_heads")
    if given is not None and given != heads:
        raise ConfigError(f"model.output_heads is set from ensemble.size when ensemble.kind is shallow "
                          f"(expected {heads}, got {given!r}): leave it out")
    return model if heads == 1 else {**model, "output_heads": heads}


def load_config(path: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a training config (YAML file or mapping) and apply ``overrides``.

    ``overrides`` are strings ``"training.max_epochs=5"``, ``"model.features=32"``; values are
    parsed by ``yaml.safe_load``. Unknown sections or training keys, and out-of-range values,
    raise :class:`ConfigError` with a one-line message naming the key.
    """
    if path is None or isinstance(path, Mapping):
        return config_from_dict(path, overrides)
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc.strerror or exc})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping with sections {', '.join(SECTIONS)}")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _training_as_run(values: Mapping) -> dict:
    """A stored or current ``training:`` mapping as the run reads it: checked, a key missing
    from it (stored before the key existed) taking what the run had, its default or what a
    validator makes of the other keys (``batch_size`` alone: no ``batch_atoms``). A mapping that
    no longer validates (a setting removed since) is compared with its gaps filled by defaults."""
    try:
        return training_config(values).model_dump()
    except ConfigError:
        return {**settings.defaults(TrainingSettings), **values}


def config_changes(stored: Mapping, current: Mapping, ignore: Sequence[str] = RESUMABLE_CHANGES) -> list[str]:
    """Keys (``section.key``) whose values differ between two resolved config dicts.

    A training key missing from either (a config stored before the key existed) counts as
    what the run had (see :func:`_training_as_run`)."""
    out = []
    for section in SECTIONS:
        a, b = dict(stored.get(section) or {}), dict(current.get(section) or {})
        if section == "training":
            a, b = _training_as_run(a), _training_as_run(b)
        elif section in ("ensemble", "finetune"):  # absent: one model, random initialisation
            a, b = _section(section, a).model_dump(), _section(section, b).model_dump()
        for key in sorted(set(a) | set(b)):
            if section == "training" and key in ignore:
                continue
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out
