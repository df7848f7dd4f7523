"""Training configuration: a YAML file with a ``model:`` and a ``training:`` section (DESIGN §7).

``model:`` is a free mapping handed to the caller's ``build_model(config)``; ``training:`` is
checked against :class:`TrainingConfig`, whose fields carry their defaults and meaning.
:func:`load_config` reads the file, applies ``section.key=value`` overrides (values parsed by
``yaml.safe_load``), and rejects unknown keys and bad values with a one-line
:class:`~mmlwf.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "amsgrad", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "exponential", "plateau")
ENERGY_LOSSES = ("per_molecule", "per_atom")
DATA_PARALLEL = ("auto", "off")
SECTIONS = ("model", "training")

#: training keys that may change between a run and its resume (they do not change the
#: epochs already done; every other key must match the stored config). Note: with
#: ``schedule: warmup_cosine`` and ``decay_steps: null`` the cosine spans ``max_epochs``, so
#: changing ``max_epochs`` on resume changes the learning rate of the epochs still to come;
#: likewise ``data_parallel`` (or another number of local devices) changes what a step is
#: for the rest of the run (see :mod:`.parallel`).
RESUMABLE_CHANGES = ("max_epochs", "max_time_min", "early_stopping_patience", "checkpoint_every",
                     "data_parallel")


def _f(default, help: str, choices: Sequence[str] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` section. Each field's ``metadata["help"]`` documents it."""

    # -- data
    batch_size: int = _f(32, "molecules per batch (the loader's budget); >= 1")
    seed: int = _f(0, "seed of parameter initialisation and of the data order (with the epoch)")
    # -- optimiser
    optimizer: str = _f("adam", "adam | adamw | amsgrad | sgd", OPTIMIZERS)
    learning_rate: float = _f(1.0e-3, "peak learning rate; > 0")
    adam_b1: float = _f(0.9, "Adam-family first-moment decay, in [0, 1)")
    adam_b2: float = _f(0.999, "Adam-family second-moment decay, in [0, 1)")
    adam_eps: float = _f(1.0e-8, "Adam-family epsilon; > 0")
    momentum: float = _f(0.0, "sgd momentum, in [0, 1); 0 = plain gradient descent")
    weight_decay: float = _f(0.0, "decoupled weight decay (AdamW); only with optimizer adamw; >= 0")
    clip_norm: float | None = _f(None, "clip the (accumulated) gradient to this global norm; null = off")
    accumulate: int = _f(1, "average the gradients of this many batches per update (gradient accumulation)")
    ema_decay: float = _f(0.0, "decay of the exponential moving average of the parameters, in [0, 1); "
                               "0 = off; the EMA parameters are used for validation and export")
    # -- schedule (counted in optimiser updates, not batches, when accumulating)
    schedule: str = _f("constant", "constant | warmup_cosine | exponential | plateau", SCHEDULES)
    warmup_steps: int = _f(0, "linear warm-up over this many updates (every schedule); 0 = none")
    decay_steps: int | None = _f(None, "warmup_cosine: updates to reach min_learning_rate (null: all "
                                       "updates of max_epochs); exponential: updates per decay_rate factor "
                                       "(null: one epoch)")
    decay_rate: float = _f(0.95, "exponential: factor per decay_steps updates, in (0, 1]")
    min_learning_rate: float = _f(1.0e-6, "floor of every schedule (cosine end value); >= 0")
    plateau_patience: int = _f(10, "plateau: validations without improvement before the rate is cut; >= 1")
    plateau_factor: float = _f(0.5, "plateau: factor applied to the rate at each cut, in (0, 1)")
    plateau_threshold: float = _f(1.0e-4, "plateau: relative improvement that counts as one; >= 0")
    # -- loss
    energy_weight: float = _f(1.0, "weight of the energy MSE (eV^2); >= 0")
    forces_weight: float = _f(50.0, "weight of the force MSE ((eV/A)^2, per component); >= 0")
    dipole_weight: float = _f(25.0, "weight of the dipole MSE ((e*A)^2); used when data and model have one")
    charge_weight: float = _f(10.0, "weight of the total-charge MSE (e^2); used when the model predicts charges")
    mono_weight: float = _f(0.0, "weight of the atomic-charge MSE (e^2) against per-atom q of the data (DCMNet: "
                                 "atomic monopoles); used when data and model have them; >= 0")
    esp_weight: float = _f(1.0, "weight of the electrostatic-potential MSE (V^2, DCMNet); used when data and "
                                "model have an ESP; >= 0")
    esp_decay_length: float | None = _f(None, "DCMNet ESP loss weighting toward points near the molecule: "
                                              "each point weighs exp(-d / esp_decay_length), d its distance (A) "
                                              "to the nearest atom, loss = sum w dV^2 / sum w; null = uniform")
    energy_loss: str = _f("per_molecule", "per_molecule | per_atom (energy error divided by the atom count)",
                          ENERGY_LOSSES)
    # -- length and stopping
    max_epochs: int = _f(1000, "epochs to train; >= 1")
    max_time_min: float | None = _f(None, "stop (with a resumable checkpoint) after this many minutes of "
                                          "this invocation; null = no limit")
    early_stopping_patience: int | None = _f(100, "stop after this many epochs without a better validation "
                                                   "loss; null = off")
    # -- bookkeeping
    checkpoint_every: int = _f(1, "write the 'latest' checkpoint every this many epochs (and at the end, "
                                  "at the time limit and on SIGTERM); >= 1")
    valid_every: int = _f(1, "validate every this many epochs (and after the last); >= 1")
    # -- devices
    data_parallel: str = _f("auto", "auto | off: with auto and n > 1 local devices (jax.local_devices()) "
                                    "each step takes n consecutive batches of one shape, one per device, "
                                    "and the loss is that of one batch holding all their molecules "
                                    "(steps, accumulate and the schedule count these n-batch steps); "
                                    "off = one device", DATA_PARALLEL)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}


def _kind(name: str) -> tuple[str, bool]:
    """(base type name, optional) of a field from its annotation string."""
    ann = str(_FIELDS[name].type)
    parts = [p.strip() for p in ann.split("|")]
    return parts[0], "None" in parts


def describe() -> str:
    """A text table of the training settings, their defaults and meaning."""
    rows = []
    for name, f in _FIELDS.items():
        default = "null" if f.default is None else f.default
        rows.append(f"  {name:<24} {default!s:<14} {f.metadata['help']}")
    return "training:\n" + "\n".join(rows)


def _coerce(name: str, value: Any) -> Any:
    base, optional = _kind(name)
    key = f"training.{name}"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(as_float)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            out = float(value)  # also "1e-3", which YAML 1.1 reads as a string
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return out
    choices = _FIELDS[name].metadata["choices"]
    if isinstance(value, bool) and choices and "off" in choices:  # YAML 1.1 reads off/on/no/yes as booleans
        value = "off" if not value else ("auto" if "auto" in choices else "on")
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{key} '{value}' is unknown (known: {', '.join(choices)})")
    return value


def _unknown(key: str, known: Sequence[str]) -> ConfigError:
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{section + '.' if section else ''}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown setting '{key}'{hint}")


def _check(t: TrainingConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"training.{key} {what}, got {getattr(t, key)!r}")

    need(t.batch_size >= 1, "batch_size", "must be >= 1")
    need(t.learning_rate > 0, "learning_rate", "must be > 0")
    need(0 <= t.adam_b1 < 1, "adam_b1", "must be in [0, 1)")
    need(0 <= t.adam_b2 < 1, "adam_b2", "must be in [0, 1)")
    need(t.adam_eps > 0, "adam_eps", "must be > 0")
    need(0 <= t.momentum < 1, "momentum", "must be in [0, 1)")
    need(t.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(t.weight_decay == 0 or t.optimizer == "adamw", "weight_decay",
         f"is decoupled weight decay and needs optimizer adamw (optimizer is {t.optimizer})")
    need(t.clip_norm is None or t.clip_norm > 0, "clip_norm", "must be > 0 or null")
    need(t.accumulate >= 1, "accumulate", "must be >= 1")
    need(0 <= t.ema_decay < 1, "ema_decay", "must be in [0, 1)")
    need(t.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    need(t.decay_steps is None or t.decay_steps >= 1, "decay_steps", "must be >= 1 or null")
    need(0 < t.decay_rate <= 1, "decay_rate", "must be in (0, 1]")
    need(0 <= t.min_learning_rate <= t.learning_rate, "min_learning_rate", "must be in [0, learning_rate]")
    need(t.plateau_patience >= 1, "plateau_patience", "must be >= 1")
    need(0 < t.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
    need(t.plateau_threshold >= 0, "plateau_threshold", "must be >= 0")
    for w in ("energy_weight", "forces_weight", "dipole_weight", "charge_weight", "mono_weight", "esp_weight"):
        need(getattr(t, w) >= 0, w, "must be >= 0")
    need(t.esp_decay_length is None or t.esp_decay_length > 0, "esp_decay_length", "must be > 0 or null")
    need(t.max_epochs >= 1, "max_epochs", "must be >= 1")
    need(t.max_time_min is None or t.max_time_min > 0, "max_time_min", "must be > 0 or null")
    need(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
         "early_stopping_patience", "must be >= 1 or null")
    need(t.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
    need(t.valid_every >= 1, "valid_every", "must be >= 1")


def training_config(values: Mapping[str, Any] | None = None) -> TrainingConfig:
    """A checked :class:`TrainingConfig` from a mapping (missing keys take their defaults)."""
    values = dict(values or {})
    for key in values:
        if key not in _FIELDS:
            raise _unknown(f"training.{key}", list(_FIELDS))
    t = TrainingConfig(**{k: _coerce(k, v) for k, v in values.items()})
    _check(t)
    return t


@dataclass(frozen=True)
class Config:
    """A resolved configuration: the model mapping and the checked training settings."""

    model: dict
    training: TrainingConfig

    def to_dict(self) -> dict:
        return {"model": dict(self.model), "training": dataclasses.asdict(self.training)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def replace(self, **training_changes) -> Config:
        """A copy with some training settings changed (checked)."""
        d = dataclasses.asdict(self.training)
        d.update(training_changes)
        return Config(dict(self.model), training_config(d))


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
        if parts[0] == "training" and (len(parts) != 2 or parts[1] not in _FIELDS):
            raise _unknown(key, list(_FIELDS))
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
    """A checked :class:`Config` from a mapping with ``model`` and ``training`` sections."""
    data = dict(data or {})
    for key in data:
        if key not in SECTIONS:
            raise _unknown(str(key), SECTIONS)
    for key in SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"section '{key}' must be a mapping, got {type(data[key]).__name__}")
    data = apply_overrides({k: v or {} for k, v in data.items()}, overrides)
    return Config(dict(data.get("model") or {}), training_config(data.get("training") or {}))


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


def config_changes(stored: Mapping, current: Mapping, ignore: Sequence[str] = RESUMABLE_CHANGES) -> list[str]:
    """Keys (``section.key``) whose values differ between two resolved config dicts.

    A training key missing from either (a config stored before the key existed) counts as
    its default."""
    defaults = {name: f.default for name, f in _FIELDS.items()}
    out = []
    for section in SECTIONS:
        a, b = dict(stored.get(section) or {}), dict(current.get(section) or {})
        if section == "training":
            a, b = {**defaults, **a}, {**defaults, **b}
        for key in sorted(set(a) | set(b)):
            if section == "training" and key in ignore:
                continue
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out
