# Helpers and input functions shared by the rules.

import re

from snakemake.exceptions import WorkflowError

# Dataset (and demo file) names become path components: no separators, no leading dot.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


wildcard_constraints:
    dataset=NAME_PATTERN,
    name=NAME_PATTERN,


def check_dataset_names(datasets):
    """Stop with a clear message when a dataset name is not safe as a path component."""
    for name in datasets:
        if not re.fullmatch(NAME_PATTERN, str(name)):
            raise WorkflowError(
                f"config 'datasets': dataset name {name!r} is not allowed; names are used in "
                "paths and may hold only letters, digits, '_', '.', '-' (not starting with '.')"
            )


check_dataset_names(config["datasets"])


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
