"""The workflow config after the schema: sweeps expanded, splits filled in, bad settings named."""

from __future__ import annotations

import pytest

from mmlwf.errors import ConfigError
from mmlwf.workflow_config import expand_sweeps, resolve_workflow_config


def base_config(**extra) -> dict:
    config = {
        "datasets": {"demo": {"sources": ["demo.extxyz"]}},
        "experiments": {"small": {"dataset": "demo", "model": {"features": 8}, "training": {"max_epochs": 2}}},
    }
    config.update(extra)
    return config


def test_sweep_expands_the_grid_into_named_experiments_over_the_base():
    sweeps = {"scan": {"base": "small", "grid": {"training.learning_rate": [1e-3, 3e-4], "model.features": [16, 32]}}}
    out = expand_sweeps(sweeps, base_config()["experiments"])
    assert list(out) == [
        "scan-learning_rate_0.001-features_16",
        "scan-learning_rate_0.001-features_32",
        "scan-learning_rate_0.0003-features_16",
        "scan-learning_rate_0.0003-features_32",
    ]
    exp = out["scan-learning_rate_0.0003-features_32"]
    assert exp["model"] == {"features": 32}
    assert exp["training"] == {"max_epochs": 2, "learning_rate": 3e-4}
    assert exp["dataset"] == "demo"


def test_sweep_keys_ending_alike_keep_their_section_and_do_not_touch_the_base():
    experiments = base_config()["experiments"]
    sweeps = {"s": {"base": "small", "grid": {"model.seed": [1], "training.seed": [2]}}}
    out = expand_sweeps(sweeps, experiments)
    assert list(out) == ["s-model.seed_1-training.seed_2"]
    assert experiments["small"]["training"] == {"max_epochs": 2}


def test_resolve_fills_experiment_defaults_and_named_splits():
    config = base_config(splits={"big_test": {"test": 0.3}},
                         sweeps={"lr": {"dataset": "demo", "grid": {"training.learning_rate": [0.01]}}})
    config["datasets"]["other"] = {"sources": ["x.xyz"], "split": "big_test"}
    out = resolve_workflow_config(config)
    assert out["datasets"]["demo"]["split"] == {"valid": 0.1, "test": 0.1, "seed": 0, "group_by": "none"}
    assert out["datasets"]["other"]["split"]["test"] == 0.3
    assert out["experiments"]["small"]["device"] == "cpu"
    assert out["experiments"]["small"]["model"]["type"] == "physnet"
    assert list(out["experiments"]) == ["small", "lr-learning_rate_0.01"]
    assert "sweeps" in out and config["experiments"].keys() == {"small"}  # the input is not changed


def test_mixture_members_are_resolved_and_checked():
    config = base_config()
    config["datasets"]["other"] = {"sources": ["x.xyz"]}
    config["experiments"]["mix"] = {"dataset": {"demo": 1.0, "other": 0.25}}
    out = resolve_workflow_config(config)
    assert out["experiments"]["mix"]["members"] == {"demo": 1.0, "other": 0.25}
    assert out["experiments"]["small"]["members"] == {"demo": 1.0}
    config["experiments"]["mix"]["dataset"] = {"demo": 1.0, "nope": 1.0}
    with pytest.raises(ConfigError, match="'experiments.mix.dataset.nope': 'nope' is not a dataset"):
        resolve_workflow_config(config)
    config["experiments"]["mix"]["dataset"] = {"demo": 0}
    with pytest.raises(ConfigError, match="'experiments.mix.dataset.demo': mixture weight 0 must be > 0"):
        resolve_workflow_config(config)


def test_a_100_point_sweep_resolves_quickly():
    import time

    grid = {"training.learning_rate": [10.0 ** -k for k in range(2, 7)], "model.features": [8, 16, 24, 32],
            "training.seed": [0, 1, 2, 3, 4]}
    t0 = time.perf_counter()
    out = resolve_workflow_config(base_config(sweeps={"big": {"base": "small", "grid": grid}}))
    assert len(out["experiments"]) == 101
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["experiments"]["small"]["model"].update(type="transformer"),
         "'experiments.small.model.type': unknown model 'transformer'"),
        (lambda c: c["experiments"]["small"]["training"].update(learning_rate=-0.1),
         "'experiments.small.training.learning_rate': must be > 0, got -0.1"),
        (lambda c: c["experiments"]["small"].update(dataset="nope"),
         "'experiments.small.dataset': 'nope' is not a dataset"),
        (lambda c: c["experiments"].update({"a/b": {"dataset": "demo"}}), "'experiments.a/b': name 'a/b'"),
        (lambda c: c["datasets"]["demo"].update(split={"valid": 0.6, "test": 0.5}),
         "'datasets.demo.split': valid + test fractions"),
        (lambda c: c.update(splits={"default": {"valid": 0.9, "test": 0.2}}), "'splits.default': valid + test"),
        (lambda c: c["datasets"]["demo"].update(split="nope"), "'datasets.demo.split': 'nope' is not in 'splits'"),
        (lambda c: c.update(sweeps={"s": {"base": "nope", "grid": {"training.seed": [1]}}}),
         "'sweeps.s.base': 'nope' is not an experiment"),
        (lambda c: c.update(sweeps={"s": {"base": "small", "grid": {"training.bad key": [1]}}}),
         "'sweeps.s.grid.training.bad key'"),
        (lambda c: c.update(sweeps={"s": {"base": "small", "grid": {"training.optimizer": ["a/b"]}}}),
         "'sweeps.s.grid.training.optimizer': sweep value 'a/b'"),
        (lambda c: c.update(sweeps={"small": {"base": "small", "grid": {"training.seed": [1, 1]}}}),
         "two grid points give the experiment name 'small-seed_1'"),
    ],
)
def test_bad_config_raises_one_line_naming_the_key(change, words):
    config = base_config()
    change(config)
    with pytest.raises(ConfigError) as info:
        resolve_workflow_config(config)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message
