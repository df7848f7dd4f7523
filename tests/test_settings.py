"""The typed declarations of the settings: checks, help, the generated schema, one-line errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmlwf.errors import ConfigError
from mmlwf.settings import (
    DEFAULT_CUTOFF,
    DEFAULT_SPLIT,
    MODELS,
    DCMNetSettings,
    PhysNetSettings,
    SettingError,
    SplitSettings,
    StatsSettings,
    TrainingSettings,
    WorkflowSettings,
    fill_defaults,
    model_settings,
    parse,
)
from mmlwf.settings.base import default_value
from mmlwf.settings import schema as gen
from mmlwf.settings.validate import check_config, load_schema
from mmlwf.workflow_config import resolve_workflow_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def config_error(change) -> str:
    """The message of resolving the demo config after ``change``, checked to be one line."""
    config = demo_config()
    change(config)
    with pytest.raises(ConfigError) as info:
        resolve_workflow_config(config, SCHEMA)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# -- the generated schema


def test_committed_schema_is_what_the_declarations_generate():
    text = SCHEMA.read_text()
    assert gen.render(text) == text, "run: python -m mmlwf.settings.schema"
    assert gen.main(["--check", str(SCHEMA)]) == 0


def test_the_schema_file_is_the_whole_generated_schema():
    assert load_schema(SCHEMA) == gen.workflow_schema()
    assert gen.new_file() == SCHEMA.read_text()


def test_schema_check_fails_on_a_stale_schema(tmp_path, capsys):
    stale = tmp_path / "config.schema.yaml"
    stale.write_text(SCHEMA.read_text().replace("(default: 64)", "(default: 65)"))
    assert gen.main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen.main([str(stale)]) == 0  # regenerates
    assert stale.read_text() == SCHEMA.read_text()


def test_schema_holds_every_declared_setting_with_its_default_and_bounds():
    defs = load_schema(SCHEMA)["$defs"]
    for name, cls in gen.DECLARED.items():
        props = defs[name]["properties"]
        assert list(props) == list(cls.model_fields), name
        assert defs[name]["additionalProperties"] is False
        for key, field in cls.model_fields.items():
            assert props[key]["description"].startswith(" ".join(field.description.split())), (name, key)
            assert "default" not in props[key]  # the workflow does not fill the declared sections
    # the workflow's own sections: every setting with its default (filled in by the schema)
    for name, cls in gen.SECTIONS.items():
        props = defs[name]["properties"]
        assert list(props) == list(cls.model_fields), name
        assert defs[name]["additionalProperties"] is False
        for key, field in cls.model_fields.items():
            assert props[key]["description"] == " ".join(field.description.split()), (name, key)
            if field.is_required():
                assert key in defs[name]["required"]
            elif (field.json_schema_extra or {}).get("fill", True):
                assert props[key]["default"] == default_value(field), (name, key)
            else:
                assert "default" not in props[key], (name, key)
    assert list(load_schema(SCHEMA)["properties"]) == list(WorkflowSettings.model_fields)
    assert defs["split"]["properties"]["valid"]["default"] == DEFAULT_SPLIT.valid
    assert defs["stats"]["properties"]["cutoff"]["default"] == DEFAULT_CUTOFF
    assert defs["experiment"]["properties"]["model"]["$ref"] == "#/$defs/model"
    assert defs["sweep"]["properties"]["model"] == {"description": defs["sweep"]["properties"]["model"]["description"],
                                                    "type": "object"}  # checked with the base's keys, not alone
    assert defs["sweep"]["properties"]["threads"]["minimum"] == 1
    assert defs["physnet"]["properties"]["features"]["minimum"] == 1
    assert defs["training"]["properties"]["learning_rate"]["exclusiveMinimum"] == 0
    assert defs["training"]["properties"]["clip_norm"]["type"] == ["number", "null"]
    assert defs["training"]["properties"]["optimizer"]["enum"] == ["adam", "adamw", "amsgrad", "sgd"]
    assert defs["model"]["properties"]["type"]["enum"] == ["physnet", "dcmnet"]


@pytest.mark.parametrize("model, ok", [
    ({}, True), ({"features": 8, "charges": True}, True), ({"type": "dcmnet", "n_dcm": 3}, True),
    ({"features": -5}, False), ({"feature": 5}, False), ({"type": "dcmnet", "charges": True}, False),
    ({"type": "dcmnet", "max_degree": 0}, False), ({"charges": 1}, False), ({"cutoff": 0}, False),
])
def test_schema_and_declaration_agree_on_model_settings(model, ok):
    config = {"datasets": {"d": {"sources": ["a.xyz"]}}, "experiments": {"e": {"dataset": "d", "model": model}}}
    try:
        check_config(copy.deepcopy(config), load_schema(SCHEMA))
        by_schema = True
    except ConfigError:
        by_schema = False
    try:
        model_settings(model)
        by_declaration = True
    except SettingError:
        by_declaration = False
    assert by_schema == by_declaration == ok


# -- the declarations


def test_declarations_check_values_and_name_the_key():
    assert parse(TrainingSettings, {"learning_rate": "1e-3"}).learning_rate == 1e-3  # YAML 1.1 string
    assert parse(TrainingSettings, {"data_parallel": False}).data_parallel == "off"  # YAML 1.1 `off`
    cases = [
        (TrainingSettings, {"batch_size": True}, "batch_size", "must be an integer, got true"),
        (TrainingSettings, {"adam_b1": 1.0}, "adam_b1", "must be < 1, got 1.0"),
        (TrainingSettings, {"max_epochs": None}, "max_epochs", "must not be null"),
        (TrainingSettings, {"optimizer": "adan"}, "optimizer", "did you mean 'adam'?"),
        (TrainingSettings, {"learning_rate": 1e-4}, "min_learning_rate", "must be at most learning_rate"),
        (PhysNetSettings, {"cutoff": float("nan")}, "cutoff", "must be finite"),
        (PhysNetSettings, {"coulomb": True, "charges": True, "cutoff": 6.0, "coulomb_cutoff": 2.0},
         "coulomb_cutoff", "must exceed cutoff/2 (3)"),
        (DCMNetSettings, {"n_dcm": 0, "wings": 2}, "wings", "unknown key (known: type, n_dcm"),
    ]
    for cls, values, key, words in cases:
        with pytest.raises(SettingError) as info:
            parse(cls, {**values, **({"learning_rate": 1e-7} if key == "min_learning_rate" else {})})
        assert info.value.key == key and words in info.value.problem, (values, str(info.value))


def test_model_type_chooses_the_declaration():
    assert isinstance(model_settings(None), PhysNetSettings)
    assert isinstance(model_settings({"type": "DCMNet"}), DCMNetSettings)
    with pytest.raises(SettingError, match="unknown model 'dcmnt' \\(did you mean 'dcmnet'\\?\\)"):
        model_settings({"type": "dcmnt"})


def test_describe_lists_every_training_setting_with_default_and_bounds():
    from mmlwf.training import describe

    text = describe()
    for name in TrainingSettings.model_fields:
        assert f"  {name} " in text
    assert "learning_rate            0.003          peak learning rate (> 0)" in text
    assert "(adam | adamw | amsgrad | sgd)" in text


def test_flax_modules_take_their_defaults_from_the_declarations():
    from mmlwf.models import dcmnet, physnet

    for module, cls in ((physnet.PhysNet(), PhysNetSettings), (dcmnet.DCMNet(), DCMNetSettings)):
        expected = {k: (False if v == "auto" else v)  # "auto" physics: off in a module built without data
                    for k, v in cls().model_dump().items() if k != "type"}
        assert {k: getattr(module, k) for k in expected} == expected
    with pytest.raises(ValueError, match="DCMNet max_degree must be >= 1, got 0"):
        dcmnet.build_model({"type": "dcmnet", "max_degree": 0})


def test_checking_the_workflow_config_does_not_load_jax():
    code = ("import sys, yaml; from mmlwf.workflow_config import resolve_workflow_config as r; "
            f"r(yaml.safe_load(open({str(REPO / 'config.yaml')!r})), {str(SCHEMA)!r}); "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the workflow config: one line naming the key


def test_the_demo_config_resolves_with_its_defaults_filled_in():
    out = resolve_workflow_config(demo_config(), SCHEMA)
    assert out["datasets"]["demo"]["stats"] == {"element_energies": "results/demo/isolated_atoms/demo.extxyz",
                                                "cutoff": 5.0, "batch_size": None, "n_shapes": 4}
    assert out["datasets"]["demo_esp"]["stats"]["element_energies"] == "auto"
    assert out["evaluation"] == {"subset": "test", "checkpoint": "best"}
    # the declared sections stay as written (the training fills in their defaults)
    assert out["experiments"]["demo_physnet"]["training"]["energy_weight"] == 20.0
    assert "adam_b1" not in out["experiments"]["demo_physnet"]["training"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(experimnts={}), "config 'experimnts': unknown key (did you mean 'experiments'?)"),
    (lambda c: c.update(colour="blue"), "config 'colour': unknown key (known: demo, labels, datasets, splits, "
                                        "experiments, sweeps, evaluation)"),
    (lambda c: c["datasets"]["demo"].update(formt="extxyz"),
     "config 'datasets.demo.formt': unknown key (did you mean 'format'?)"),
    (lambda c: c["datasets"]["demo"].update(energy_units="eV"),
     "config 'datasets.demo.energy_units': unknown key (did you mean 'energy_unit'?)"),
    (lambda c: c["datasets"]["demo"].update(split={"valid": 0.1, "tset": 0.1}),
     "config 'datasets.demo.split.tset': unknown key (did you mean 'test'?)"),
    (lambda c: c["datasets"]["demo"].update(format="xyz"),
     "config 'datasets.demo.format': 'xyz' is not one of auto, npz, extxyz"),
    (lambda c: c["datasets"]["demo"].update(split=5), "config 'datasets.demo.split': must be a string or a mapping"),
    (lambda c: c["datasets"].update({"a/b": {"sources": ["x"]}}),
     "config 'datasets.a/b': name 'a/b' is not allowed: names are used in paths"),
    (lambda c: c["datasets"]["demo"].update(energy_unit="kcal"),
     "config 'datasets.demo.energy_unit': unknown energy unit 'kcal' (did you mean 'kcal/mol'?); known (in any "
     "case): ev, ha, hartree, kcal/mol, kj/mol, mev, ry, rydberg"),
    (lambda c: c["datasets"]["demo"].update(length_unit="angstroem"),
     "config 'datasets.demo.length_unit': unknown length unit 'angstroem' (did you mean 'angstrom'?)"),
    (lambda c: c["experiments"]["demo_physnet"]["model"].update(features=-5),
     "config 'experiments.demo_physnet.model.features': must be >= 1, got -5"),
    (lambda c: c["experiments"]["demo_physnet"]["model"].update(featurs=16),
     "config 'experiments.demo_physnet.model.featurs': unknown key (did you mean 'features'?)"),
    (lambda c: c["experiments"]["demo_dcmnet"]["model"].update(charges=True),
     "config 'experiments.demo_dcmnet.model.charges': unknown key (known: type, n_dcm, features"),
    (lambda c: c["experiments"]["demo_physnet"]["model"].update(charges=False, coulomb=True),
     "config 'experiments.demo_physnet.model.coulomb': needs charges: set charges: true"),
    (lambda c: c["experiments"]["demo_physnet"]["training"].update(optimizer="adamw", weight_decay=-1),
     "config 'experiments.demo_physnet.training.weight_decay': must be >= 0, got -1"),
    (lambda c: c["experiments"]["demo_physnet"]["training"].update(weight_decay=0.1),
     "config 'experiments.demo_physnet.training.weight_decay': is decoupled weight decay and needs optimizer adamw"),
    (lambda c: c.update(sweeps={"s": {"base": "demo_physnet", "grid": {"model.featurs": [8]}}}),
     "config 'experiments.s-featurs_8.model.featurs': unknown key (did you mean 'features'?) "
     "(an experiment of sweep 's')"),
])
def test_bad_workflow_config_gives_one_line_naming_the_key(change, message):
    assert message in config_error(change)


def test_yaml_11_slips_are_read_as_meant():
    config = demo_config()
    config["experiments"]["demo_physnet"]["training"].update(learning_rate="1e-3", data_parallel=False)
    config["datasets"]["demo"]["stats"] = {"cutoff": "5e0"}
    out = resolve_workflow_config(config, SCHEMA)
    assert out["experiments"]["demo_physnet"]["training"]["learning_rate"] == 1e-3
    assert out["experiments"]["demo_physnet"]["training"]["data_parallel"] == "off"
    assert out["datasets"]["demo"]["stats"]["cutoff"] == 5.0


# -- one home for each setting


def test_every_model_setting_has_help_text():
    for name, cls in MODELS.items():
        for key, field in cls.model_fields.items():
            assert field.description and len(field.description) > 8, (name, key)
        assert "physnet" in gen.model_schema()["properties"]["type"]["enum"]
    from mmlwf.training import describe

    assert "features" in describe("physnet") and "n_dcm" in describe("dcmnet")
    with pytest.raises(ConfigError, match="no settings section 'dcmnt' \\(did you mean 'dcmnet'"):
        describe("dcmnt")


def test_the_default_cutoff_and_split_have_one_home():
    import inspect

    from mmlwf import cli, split
    from mmlwf.commands.common import resolve_defaults

    assert PhysNetSettings().cutoff == StatsSettings().cutoff == DEFAULT_CUTOFF
    params = inspect.signature(split.split_dataset).parameters
    assert {k: params[k].default for k in ("valid", "test", "seed", "group_by")} == DEFAULT_SPLIT.model_dump()
    args = resolve_defaults(cli.build_parser().parse_args(["split", "ds", "-o", "s.npz"]))
    assert {k: getattr(args, k) for k in ("valid", "test", "seed", "group_by")} == DEFAULT_SPLIT.model_dump()
    assert split.GROUP_BY == tuple(SplitSettings.model_fields["group_by"].annotation.__args__)


def test_fill_defaults_follows_the_declarations_like_the_schema():
    config = demo_config()
    config["datasets"]["demo"]["points"] = {"mode": "density"}
    by_schema = copy.deepcopy(config)
    check_config(by_schema, load_schema(SCHEMA))
    assert fill_defaults(WorkflowSettings, copy.deepcopy(config)) == by_schema
    assert by_schema["datasets"]["demo"]["points"]["spacing"] == 0.5  # a section given is filled in
    assert "points" not in by_schema["datasets"]["demo_esp"]  # an optional section is not added
    assert by_schema["labels"]["demo_esp"]["points"]["spacing"] == 0.5
    assert by_schema["experiments"]["demo_dcmnet"]["training"] == config["experiments"]["demo_dcmnet"]["training"]


def test_split_settings_check_their_sizes():
    with pytest.raises(SettingError, match="valid \\+ test fractions \\(0.6 \\+ 0.5\\)"):
        parse(SplitSettings, {"valid": 0.6, "test": 0.5})
    with pytest.raises(SettingError) as info:
        parse(SplitSettings, {"test": 2.5})
    assert info.value.key == "test" and "neither a fraction" in info.value.problem
    assert parse(SplitSettings, {"valid": 10, "test": 0.2}).valid == 10


def test_swept_experiments_get_their_defaults_and_checks_from_the_schema():
    config = demo_config()
    config["sweeps"] = {"s": {"base": "demo_dcmnet", "model": {"n_dcm": 3}, "grid": {"training.seed": [1, 2]}}}
    out = resolve_workflow_config(config, SCHEMA)
    exp = out["experiments"]["s-seed_2"]
    assert exp["model"] == {**config["experiments"]["demo_dcmnet"]["model"], "n_dcm": 3}
    assert exp["training"]["seed"] == 2 and exp["device"] == "cpu" and exp["threads"] == 2
    assert out["experiments"]["demo_dcmnet"] == {**config["experiments"]["demo_dcmnet"], "device": "cpu",
                                                 "threads": 2, "members": {"demo_esp": 1.0}, "ensemble": {},
                                                 "finetune": {}}
    config["sweeps"]["s"]["threads"] = 0
    message = config_error(lambda c: c.update(sweeps=config["sweeps"]))
    assert "'sweeps.s.threads': must be >= 1" in message or "(an experiment of sweep 's')" in message, message
    message = config_error(lambda c: c.update(sweeps={"s": {"base": "demo_physnet", "device": "tpu",
                                                            "grid": {"training.seed": [1]}}}))
    assert "'tpu' is not one of cpu, gpu" in message, message
