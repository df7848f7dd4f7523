"""Model settings as plain dicts (config files, ``model.json``) and back, shared by the models.

The settings are declared in :mod:`mmlwf.settings.models` (types, defaults, bounds, help);
:func:`build` checks a config dict against a declaration (unknown keys and bad values raise
``ValueError`` naming the key) and makes the flax module, :func:`settings_of` gives the
JSON-ready dict that :func:`build` turns back into the same module, and :func:`check`
validates a module constructed directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ..settings import ModelSettings, SettingError, defaults, parse


def _error(settings: type[ModelSettings], exc: SettingError) -> ConfigError:
    if exc.known is not None:
        return ConfigError(f"unknown {settings.label} model key {exc.key!r} {exc.problem.removeprefix('unknown key ')}")
    return ConfigError(f"{settings.label} {exc.key} {exc.problem}")


def field_defaults(settings: type[ModelSettings]) -> dict[str, Any]:
    """The declared defaults of the module's fields (without ``type``)."""
    return {k: v for k, v in defaults(settings).items() if k != "type"}


def build(settings: type[ModelSettings], cls: Callable, config: Mapping):
    """``cls(**config)`` after checking every key and value; ``type`` must match if given."""
    try:
        return cls(**parse(settings, config).fields())
    except SettingError as exc:
        raise _error(settings, exc) from None


def settings_of(settings: type[ModelSettings], model) -> dict:
    """The JSON-ready configuration of ``model`` (with ``type``)."""
    try:
        return parse(settings, {k: getattr(model, k) for k in field_defaults(settings)}).model_dump()
    except SettingError as exc:
        raise _error(settings, exc) from None


def check(settings: type[ModelSettings], model) -> None:
    """Raise ``ValueError`` naming the field if ``model`` is a configuration it cannot run."""
    settings_of(settings, model)
