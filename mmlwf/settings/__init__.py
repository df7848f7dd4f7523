"""Typed declarations of the configuration: one pydantic field per setting (type, default,
bounds, help text), the one home of each. From them come the checks with one-line errors
(:func:`parse`), ``mmlwf.training.describe()``, and the ``model`` and ``training`` parts of
``schemas/config.schema.yaml`` (``python -m mmlwf.settings.schema`` writes them).

To declare another section: a :class:`Settings` subclass in a module here, added to
:data:`mmlwf.settings.schema.DECLARED` (and referenced from the hand-written schema).
"""

from .base import Settings, SettingError, defaults, describe, parse
from .models import DEFAULT_MODEL, MODELS, DCMNetSettings, ModelSettings, PhysNetSettings, model_settings
from .training import TrainingSettings

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "DCMNetSettings",
    "ModelSettings",
    "PhysNetSettings",
    "SettingError",
    "Settings",
    "TrainingSettings",
    "defaults",
    "describe",
    "model_settings",
    "parse",
]
