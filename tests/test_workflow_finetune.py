"""Fine-tuning in the workflow: ``finetune.init_from: <experiment>`` is a DAG edge (the source's
training is an input of the fine-tuning's train job), a name that is neither an experiment nor
an existing path and a cycle are one-line config errors, and a changed fine-tuning setting
re-runs only the fine-tuning."""

from __future__ import annotations

import pytest

from mmlwf.errors import ConfigError
from mmlwf.workflow_config import resolve_workflow_config

from .test_workflow import planned_jobs, snakemake, write_config, write_extxyz

TRAINING = {"batch_size": 2, "max_epochs": 1}
#: the fine-tuning's trained model: the jobs up to it (evaluation and report are other tests' work)
TARGET = "results/runs/ft/model.json"


def config(**finetunes) -> dict:
    """``pre`` trained from scratch on water, and one experiment per ``name=init_from``."""
    experiments = {"pre": {"dataset": "water", "model": {"features": 8, "num_iterations": 1, "num_basis_functions": 4},
                           "training": TRAINING}}
    for name, source in finetunes.items():
        experiments[name] = {"dataset": "water", "training": TRAINING,
                             "finetune": {"init_from": source, "freeze": ["embedding"]}}
    return {"datasets": {"water": {"sources": ["water.extxyz"], "split": {"valid": 1, "test": 1}}},
            "experiments": experiments}


def test_an_experiment_source_becomes_its_run_directory_and_the_model_takes_no_type():
    out = resolve_workflow_config(config(ft="pre"))["experiments"]
    assert out["ft"]["source"] == "pre" and out["ft"]["finetune"]["init_from"] == "results/runs/pre"
    assert out["ft"]["model"] == {}  # the source's settings are used: no default type to contradict them
    assert "source" not in out["pre"] and out["pre"]["finetune"] == {}


@pytest.mark.parametrize("finetunes, words", [
    ({"ft": "nowhere"}, "experiments.ft.finetune.init_from': 'nowhere' is neither an experiment (known: pre, ft)"),
    ({"ft": "ft"}, "experiments.ft.finetune.init_from': an experiment cannot fine-tune itself"),
    ({"a": "b", "b": "a"}, "experiments.a.finetune.init_from': a cycle of fine-tuning (a -> b -> a)"),
])
def test_an_unknown_source_or_a_cycle_is_one_line(finetunes, words):
    with pytest.raises(ConfigError) as err:
        resolve_workflow_config(config(**finetunes))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_pretrain_then_fine_tune_and_a_changed_setting_reruns_only_the_fine_tuning(tmp_path):
    write_extxyz(tmp_path / "water.extxyz", n=6)
    write_config(tmp_path, config(ft="pre"))
    plan = snakemake(tmp_path, "-n", TARGET)
    assert plan.returncode == 0, plan.stderr[-3000:]
    out = plan.stdout + plan.stderr
    ft_train = out.split("wildcards: experiment=ft")[0].rsplit("rule train:", 1)[1]
    assert "results/runs/pre/model.json" in ft_train.split("output:")[0]  # the edge pre -> ft
    done = snakemake(tmp_path, TARGET)
    assert done.returncode == 0, done.stderr[-3000:]
    changed = config(ft="pre")
    changed["experiments"]["ft"]["finetune"]["learning_rate"] = 1.0e-4
    write_config(tmp_path, changed)
    again = snakemake(tmp_path, "-n", TARGET)
    jobs = planned_jobs(again.stdout + again.stderr)
    assert ("train", "experiment=ft") in jobs and ("train", "experiment=pre") not in jobs, jobs
    assert not any(rule in ("convert", "split", "stats") for rule, _ in jobs)
