# Helpers and input functions shared by the rules.

import re

from snakemake.exceptions import WorkflowError

# Dataset (and demo file) names become path components: no separators, no leading dot.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


wildcard_constraints:
    dataset=NAME_PATTERN,
    name=NAME_PATTERN,
    experiment=NAME_PATTERN,


def check_dataset_names(datasets):
    """Stop with a clear message when a dataset name is not safe as a path component."""
    for name in datasets:
        if not re.fullmatch(NAME_PATTERN, str(name)):
            raise WorkflowError(
                f"config 'datasets': dataset name {name!r} is not allowed; names are used in "
                "paths and may hold only letters, digits, '_', '.', '-' (not starting with '.')"
            )


check_dataset_names(config["datasets"])


def check_experiments(experiments, datasets):
    """Stop before any job when an experiment names an unknown dataset or has a bad setting."""
    from mmlwf.errors import ConfigError
    from mmlwf.training.config import config_from_dict

    for name, exp in experiments.items():
        if not re.fullmatch(NAME_PATTERN, str(name)):
            raise WorkflowError(f"config 'experiments': name {name!r} is not allowed (letters, digits, '_', '.', '-')")
        if exp["dataset"] not in datasets:
            raise WorkflowError(
                f"config 'experiments.{name}.dataset': {exp['dataset']!r} is not a dataset "
                f"(known: {', '.join(datasets) or 'none'})"
            )
        try:
            config_from_dict({"model": exp["model"], "training": exp["training"]})
        except ConfigError as exc:
            raise WorkflowError(f"config 'experiments.{name}': {exc}") from None


check_experiments(config["experiments"], config["datasets"])


def experiment_config(wildcards):
    """The experiment's entry (validated, defaults filled)."""
    return config["experiments"][wildcards.experiment]


def experiment_data(wildcards):
    """Input function: the packed dataset, split and stats of the experiment's dataset."""
    root = f"results/datasets/{experiment_config(wildcards)['dataset']}"
    return {"packed": f"{root}/packed", "split": f"{root}/split.npz", "stats": f"{root}/stats.json"}


def experiment_training_config(wildcards):
    """Params: the experiment's model and training sections (a change re-runs its training)."""
    exp = experiment_config(wildcards)
    return {"model": exp["model"], "training": exp["training"]}


def experiment_gpus(wildcards):
    return 1 if experiment_config(wildcards)["device"] == "gpu" else 0


def experiment_threads(wildcards):
    return experiment_config(wildcards)["threads"]


def dataset_config(wildcards):
    """The (validated, defaults filled) config entry of the dataset in ``wildcards``."""
    return config["datasets"][wildcards.dataset]


def dataset_sources(wildcards):
    """Input function: the dataset's source files, in order."""
    return dataset_config(wildcards)["sources"]


def dataset_setting(key):
    """A params function returning the dataset's setting ``key`` (format, units, keys)."""

    def setting(wildcards):
        return dataset_config(wildcards)[key]

    return setting
