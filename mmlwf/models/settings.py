"""Model settings as plain dicts (config files, ``model.json``) and back, shared by the models.

A model declares its integer, float and boolean fields; :func:`build` checks a config dict
against them (unknown keys, wrong types, non-finite numbers raise ``ValueError`` naming the
key) and :func:`settings_of` gives the JSON-ready dict that :func:`build` turns back into the
same model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelFields:
    """The configurable fields of one model type."""

    name: str  # as in messages, e.g. "PhysNet"
    type: str  # the config's model.type, e.g. "physnet"
    ints: tuple[str, ...]
    floats: tuple[str, ...]
    bools: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return self.ints + self.floats + self.bools

    def coerce(self, key: str, value) -> Any:
        """``value`` as the type of field ``key`` (ValueError naming the key otherwise)."""
        if key in self.bools:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise ValueError(f"{self.name} {key} must be true or false, got {value!r}")
        if isinstance(value, (bool, np.bool_)) or value is None:
            raise ValueError(f"{self.name} {key} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} {key} must be a number, got {value!r}") from None
        if not np.isfinite(number):
            raise ValueError(f"{self.name} {key} must be finite, got {value!r}")
        if key in self.ints:
            if number != int(number):
                raise ValueError(f"{self.name} {key} must be an integer, got {value!r}")
            return int(number)
        return number


def build(fields: ModelFields, cls: Callable, config: Mapping, check: Callable[[Any], None]):
    """``cls(**config)`` after checking every key and value; ``type`` must match if given."""
    kwargs: dict[str, Any] = {}
    for key, value in dict(config).items():
        if key == "type":
            if str(value).lower() != fields.type:
                raise ValueError(f"model type {value!r} is not {fields.type}")
            continue
        if key not in fields.keys:
            raise ValueError(f"unknown {fields.name} model key {key!r} (known: {', '.join(fields.keys)})")
        kwargs[key] = fields.coerce(key, value)
    model = cls(**kwargs)
    check(model)
    return model


def settings_of(fields: ModelFields, model) -> dict:
    """The JSON-ready configuration of ``model`` (with ``type``)."""
    out: dict[str, Any] = {"type": fields.type}
    for key in fields.keys:
        value = getattr(model, key)
        out[key] = bool(value) if key in fields.bools else int(value) if key in fields.ints else float(value)
    return out
