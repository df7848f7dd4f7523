# Helpers and input functions shared by the rules.

import sys

# mmlwf from this repository, also where it is not installed
sys.path.insert(0, workflow.basedir)

from mmlwf.element_energies import KEYWORDS as ELEMENT_ENERGY_KEYWORDS
from mmlwf.errors import ConfigError
from mmlwf.steps.data import CONVERT_SETTINGS
from mmlwf.workflow_config import NAME_PATTERN, resolve_workflow_config


wildcard_constraints:
    dataset=NAME_PATTERN,
    name=NAME_PATTERN,
    experiment=NAME_PATTERN,
    label=NAME_PATTERN,


# The config checked against schemas/config.schema.yaml (its defaults filled in), sweeps expanded
# into experiments, split settings filled in, every name and setting checked: a wrong config
# stops here, before any job, with one line naming the key and exit code 2 (a WorkflowError
# would add Snakemake's file and line around it).
try:
    config.update(
        resolve_workflow_config(
            config, f"{workflow.basedir}/schemas/config.schema.yaml"
        )
    )
except ConfigError as exc:
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(2)


def experiment_config(wildcards):
    """The experiment's entry (validated, defaults filled)."""
    return config["experiments"][wildcards.experiment]


def experiment_data(wildcards):
    """Input function: the packed datasets, splits and stats of the experiment's dataset(s)."""
    exp = experiment_config(wildcards)
    roots = [f"results/datasets/{name}" for name in exp["members"]]
    source = exp["finetune"].get("init_from")
    # another experiment's: its training runs first
    if source is not None and "source" in exp:
        source = f"{source}/model.json"
    return {
        "packed": [f"{root}/packed" for root in roots],
        "split": [f"{root}/split.npz" for root in roots],
        "stats": [f"{root}/stats.json" for root in roots],
        **({"source": source} if source else {}),
    }


def experiment_weights(wildcards):
    """Params: the mixture weights of the experiment's datasets (1.0 for a single dataset)."""
    return list(experiment_config(wildcards)["members"].values())


def experiment_training_config(wildcards):
    """Params: the experiment's model, training, ensemble and finetune sections (a change re-runs its training)."""
    exp = experiment_config(wildcards)
    # finetune only when given: the params of every other training stay as they were (no re-run)
    return {
        "model": exp["model"],
        "training": exp["training"],
        "ensemble": exp["ensemble"],
        **({"finetune": exp["finetune"]} if exp["finetune"] else {}),
    }


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


def experiment_env(wildcards):
    """conda env of a training/evaluation job: the CUDA build of jaxlib for gpu experiments."""
    gpu = experiment_config(wildcards)["device"] == "gpu"
    return "../envs/train-cuda.yaml" if gpu else "../envs/train.yaml"


def evaluation_setting(key):
    """A params function returning the workflow's ``evaluation`` setting ``key``."""

    def setting(wildcards):
        return config["evaluation"][key]

    return setting


def all_run_files(name):
    """Every experiment's ``results/runs/{experiment}/{name}``, in config order."""
    return [f"results/runs/{experiment}/{name}" for experiment in config["experiments"]]


def dataset_esp_files(wildcards):
    """Input function: the density cubes and geometry files of an ESP dataset."""
    ds = dataset_config(wildcards)
    return list(ds.get("density", [])) + list(ds.get("geometry", []))


def dataset_convert_settings(wildcards):
    """Params: the dataset's conversion settings (format, units, keys, ESP settings)."""
    ds = dataset_config(wildcards)
    return {key: ds[key] for key in CONVERT_SETTINGS if key in ds}


def label_sources(wildcards):
    """Input function: the geometry files of a label."""
    return config["labels"][wildcards.label]["sources"]


def label_settings(wildcards):
    """Params: everything about a label except its sources."""
    return {
        k: v for k, v in config["labels"][wildcards.label].items() if k != "sources"
    }


def dataset_element_energies(wildcards):
    """Params: the dataset's element reference energies (a file, numbers per element, fit or auto)."""
    return dataset_config(wildcards)["stats"]["element_energies"]


def dataset_isolated_atoms(wildcards):
    """Input function: the dataset's isolated-atom file, when its element energies name one
    (checked to be a file name, not a misspelt keyword, with the config)."""
    choice = dataset_element_energies(wildcards)
    return (
        [choice]
        if isinstance(choice, str) and choice not in ELEMENT_ENERGY_KEYWORDS
        else []
    )
