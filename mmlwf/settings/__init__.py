"""Typed declarations of the configuration: one pydantic field per setting (type, default,
bounds, help text), the one home of each. From them come the checks with one-line errors
(:func:`parse`), the defaults (:func:`defaults`, :func:`fill_defaults`), the text tables of
:func:`describe` (``mmlwf.training.describe()``), and ``schemas/config.schema.yaml``
(``python -m mmlwf.settings.schema`` writes it).

The sections: :mod:`.models` (``model:``, one declaration per model type), :mod:`.training`
(``training:``), :mod:`.data` (``demo``, ``labels``, ``datasets`` with their ``points``,
``split`` and ``stats``, ``splits``) and :mod:`.workflow` (``experiments``, ``sweeps``,
``evaluation`` and the config as a whole).

To declare another section: a :class:`Settings` subclass in a module here, used as the type of
a field of the section it belongs to and named in :data:`mmlwf.settings.schema.SECTIONS`.
"""

from .base import NAME_PATTERN, Name, Settings, SettingError, defaults, describe, fill_defaults, parse
from .data import (
    DEFAULT_CUTOFF,
    DEFAULT_SPLIT,
    GROUP_BY,
    DatasetSettings,
    DemoSettings,
    LabelSettings,
    PointsSettings,
    SplitSettings,
    StatsSettings,
)
from .ensemble import ENSEMBLE_KINDS, EnsembleSettings
from .finetune import FinetuneSettings
from .models import DEFAULT_MODEL, MODELS, DCMNetSettings, ModelSettings, PhysNetSettings, model_settings
from .training import TrainingSettings
from .workflow import EXPERIMENT_KEYS, EvaluationSettings, ExperimentSettings, SweepSettings, WorkflowSettings

__all__ = [
    "DEFAULT_CUTOFF",
    "DEFAULT_MODEL",
    "DEFAULT_SPLIT",
    "EXPERIMENT_KEYS",
    "GROUP_BY",
    "MODELS",
    "NAME_PATTERN",
    "DCMNetSettings",
    "DatasetSettings",
    "ENSEMBLE_KINDS",
    "EnsembleSettings",
    "FinetuneSettings",
    "DemoSettings",
    "EvaluationSettings",
    "ExperimentSettings",
    "LabelSettings",
    "ModelSettings",
    "Name",
    "PhysNetSettings",
    "PointsSettings",
    "SettingError",
    "Settings",
    "SplitSettings",
    "StatsSettings",
    "SweepSettings",
    "TrainingSettings",
    "WorkflowSettings",
    "defaults",
    "describe",
    "fill_defaults",
    "model_settings",
    "parse",
]
