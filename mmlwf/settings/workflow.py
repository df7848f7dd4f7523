"""The workflow config as a whole (``config.yaml``): its sections ``demo``, ``labels``,
``datasets``, ``splits``, ``experiments``, ``sweeps`` and ``evaluation``, declared once.

An experiment's ``model`` and ``training`` are kept as the user wrote them (the training fills
in their defaults from :mod:`mmlwf.settings.models` and :mod:`mmlwf.settings.training`), so a
changed default does not change every experiment's parameters; the schema checks them against
those declarations. A sweep takes the experiment keys (none filled in: the sweep's experiments
get their defaults when the config is checked, after the sweeps are expanded).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from .base import Name, Settings, optional
from .data import DEFAULT_SPLIT, DatasetSettings, DemoSettings, LabelSettings, SplitSettings

DEVICES = ("cpu", "gpu")
Weight = Annotated[float, Field(gt=0)]


class ExperimentSettings(Settings):
    """A training (results/runs/{name}/): a dataset of `datasets`, the model and training sections."""

    dataset: Name | Annotated[dict[str, Weight], Field(min_length=1)] = Field(
        description="a name from `datasets`, or a weighted mixture {name: weight, ...} (each training split "
        "visited `weight` times per epoch; element energies fitted on their union; evaluated on each member's "
        "held-out split)")
    device: Literal[DEVICES] = Field("cpu", description="cpu, or gpu (the job then declares resources gpu=1 and "
                                                        "uses envs/train-cuda.yaml)")
    threads: int = Field(2, ge=1, description="CPU threads for the job")
    model: dict[str, Any] = Field({}, description="the model settings (`type` chooses the model)",
                                  json_schema_extra={"schema": {"$ref": "#/$defs/model"}})
    training: dict[str, Any] = Field({}, description="the training settings",
                                     json_schema_extra={"schema": {"$ref": "#/$defs/training"}})
    ensemble: dict[str, Any] = Field({}, description="an ensemble of models trained together (size: members; "
                                     "their spread is the uncertainty)",
                                     json_schema_extra={"schema": {"$ref": "#/$defs/ensemble"}})
    finetune: dict[str, Any] = Field({}, description="start from a trained model (init_from: another experiment's "
                                     "name, whose training then runs first, a run directory or an exported file; "
                                     "the model settings are the source's)",
                                     json_schema_extra={"schema": {"$ref": "#/$defs/finetune"}})


#: the experiment keys a sweep may set besides ``base`` and ``grid``
EXPERIMENT_KEYS = tuple(ExperimentSettings.model_fields)
#: the sections whose keys a sweep's grid varies (``model.features``), kept as written
GRID_SECTIONS = tuple(k for k, f in ExperimentSettings.model_fields.items() if "schema" in (f.json_schema_extra or {}))


def _as_in_experiment(field: FieldInfo) -> tuple[str, dict]:
    """(description, schema) of an experiment key set by a sweep: a section (model, training) is
    checked together with the base's, as the experiments' section, so here only as a mapping."""
    if "schema" in (field.json_schema_extra or {}):
        text = f"{field.description}: keys checked, with the base's, as the experiments'"
        return text, {"schema": {"type": "object"}}
    return f"{field.description} (as for an experiment)", {}

SweepSettings = create_model(
    "SweepSettings",
    __base__=Settings,
    __doc__="A grid of settings expanded into experiments.",
    base=(str | None, optional("an experiment of `experiments` to start from")),
    **{name: ((Annotated[f.annotation, *f.metadata] if f.metadata else f.annotation) | None,
              optional(*_as_in_experiment(f)))
       for name, f in ExperimentSettings.model_fields.items()},
    grid=(dict[Annotated[str, Field(pattern=rf"^({'|'.join(GRID_SECTIONS)})[.][A-Za-z0-9_]+$")],
               Annotated[list[Any], Field(min_length=1)]],
          Field(description="model.<key> or training.<key> -> list of values", min_length=1)),
)


class EvaluationSettings(Settings):
    """How every experiment is evaluated (results/runs/{name}/metrics.json, predictions.csv, plots/)."""

    subset: Literal["test", "valid", "train", "all"] = Field("test", description="the part of the dataset's split "
                                                                                 "to evaluate on")
    checkpoint: Literal["best", "latest"] = Field("best", description="best (by validation loss, EMA weights "
                                                                      "when EMA is on) or latest")


_DEFAULT_SPLIT_TEXT = ", ".join(f"{k} {v}" for k, v in DEFAULT_SPLIT.model_dump().items())


class WorkflowSettings(Settings):
    """config.yaml of the mmlwf workflow."""

    demo: DemoSettings = Field(DemoSettings(), description=DemoSettings.__doc__)
    labels: dict[Name, LabelSettings] = Field(
        {}, description="Reference ESP datasets computed here with pyscf (rule label): the geometries of `sources` "
        "labelled with the SCF energy, dipole and the ESP on points around each molecule, written to "
        "results/labels/{name}/packed (a per-structure cache in results/labels/{name}/cache lets an interrupted "
        "run resume). Use it as a dataset source (sources: [results/labels/{name}/packed]).")
    datasets: dict[Name, DatasetSettings] = Field(
        {}, description="Datasets by name. Each is converted to results/datasets/{name}/packed and validated "
        "(results/datasets/{name}/validation.json). Names are used in paths: letters, digits, '_', '.', '-', "
        "not starting with '.'.")
    splits: dict[Name, SplitSettings] = Field(
        {}, description="Named split settings; a dataset uses `default` unless its `split` names another entry "
        f"(or gives its own settings). `default` itself defaults to {_DEFAULT_SPLIT_TEXT}.")
    experiments: dict[Name, ExperimentSettings] = Field(
        {}, description="Trainings by name (results/runs/{name}/). Each names a dataset of `datasets` and "
        "carries the two sections of a training config: `model` and `training`; keys not given take their "
        "defaults. Names are used in paths: letters, digits, '_', '.', '-', not starting with '.'.")
    sweeps: dict[Name, SweepSettings] = Field(
        {}, description="Grids of settings expanded into experiments named {sweep}-{key}_{value}[-{key}_{value}...], "
        "e.g. lr_scan-learning_rate_0.001-features_16. Each sweep starts from the experiment named by `base` (if "
        "any), applies its own dataset/device/threads/model/training keys, then each point of `grid`.")
    evaluation: EvaluationSettings = Field(EvaluationSettings(), description=EvaluationSettings.__doc__)
