"""The adapter layer (mmlwf.steps): the CLI and the rules call the same steps with the same
defaults; convert's options are declared once (ConvertOptions); label's defaults live in
LabelSettings."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from mmlwf.cli import build_parser
from mmlwf.commands.common import resolve_defaults
from mmlwf.convert import ConvertOptions, convert
from mmlwf.errors import ConfigError
from mmlwf.label import LabelSettings, label_structures
from mmlwf.steps import convert_options, point_settings
from mmlwf.steps.data import CONVERT_SETTINGS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())


def _entries(section: str) -> dict:
    """The properties of one entry of a top-level mapping section (following its ``$ref``)."""
    entry = SCHEMA["properties"][section]["additionalProperties"]
    if "$ref" in entry:
        entry = SCHEMA["$defs"][entry["$ref"].rsplit("/", 1)[-1]]
    return entry["properties"]


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _parse(*argv: str) -> argparse.Namespace:
    return resolve_defaults(build_parser().parse_args(list(argv)))


def _defaults(func) -> dict:
    return {k: p.default for k, p in inspect.signature(func).parameters.items() if p.default is not p.empty}


def test_convert_options_are_the_cli_options():
    actions = {a.dest: a for a in _subparser("convert")._actions}
    for f in dataclasses.fields(ConvertOptions):
        if f.metadata["flag"] is None:
            continue
        assert f.name in actions, f.name
        assert actions[f.name].option_strings[0] == f.metadata["flag"]  # --x (and --no-x for a boolean)
        assert actions[f.name].default == f.default, f.name
    args = _parse("convert", "a.xyz", "-o", "out")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ConvertOptions) if f.name != "points"}
    assert ConvertOptions(**given) == ConvertOptions()


def test_convert_takes_exactly_the_options_as_keywords(tmp_path):
    with pytest.raises(TypeError, match="colour"):
        convert([tmp_path / "a.xyz"], tmp_path / "out", colour="red")


def test_convert_options_from_a_datasets_settings():
    o = convert_options({"format": "auto", "energy_unit": None, "keys": {"E": "energy"}, "density": ["a.cube"],
                         "points": {"max_points": 5}, "total_charge": 1.0})
    assert o.fmt is None and o.energy_unit is None and o.keys == {"E": "energy"} and o.density == ["a.cube"]
    assert o.points == point_settings({"mode": "density", "max_points": 5}) and o.total_charge == 1.0
    assert convert_options({"format": "cube"}).fmt == "cube"
    assert convert_options({"points": {}}).points is None  # the reader's own choice
    with pytest.raises(ConfigError, match="colour"):
        convert_options({"colour": "red"})


def test_every_dataset_conversion_setting_reaches_convert():
    datasets = _entries("datasets")
    converter = set(datasets) - {"sources", "split", "stats"}
    assert converter <= set(CONVERT_SETTINGS), converter - set(CONVERT_SETTINGS)


def test_label_defaults_have_one_home():
    theory = LabelSettings()
    lib = _defaults(label_structures)
    assert (lib["method"], lib["basis"], lib["charges"], lib["forces"]) == (
        theory.method, theory.basis, theory.charges, theory.forces)
    args = _parse("label", "a.xyz", "-o", "out")
    assert (args.method, args.basis, args.stride) == (lib["method"], lib["basis"], lib["stride"])
    # the workflow config's defaults (filled in by the schema) are the same
    labels = _entries("labels")
    for key in ("method", "basis", "stride", "max_structures", "charges"):
        assert labels[key]["default"] == lib[key], key


@pytest.mark.parametrize("argv, func", [
    (("split", "ds", "-o", "s.npz"), "mmlwf.split:split_dataset"),
    (("bench", "loader", "ds"), "mmlwf.bench:bench_loader"),
    (("evaluate", "run", "--data", "ds", "-o", "m.json"), "mmlwf.analysis.evaluate:evaluate_run"),
    (("report", "run", "-o", "r.html"), "mmlwf.analysis.report:write_report"),
])
def test_cli_defaults_are_the_librarys(argv, func):
    import importlib

    module, name = func.split(":")
    lib = _defaults(getattr(importlib.import_module(module), name))
    args = vars(_parse(*argv))
    shared = set(args) & set(lib)
    assert shared, argv
    for key in shared:
        assert args[key] == lib[key], key


def test_the_cli_starts_without_the_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys; from mmlwf.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'numba', 'ase', 'jax') if m in sys.modules))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert got.stdout.strip() == "[]"


def test_rule_scripts_only_call_steps():
    """Each rule script maps snakemake's input/output/params onto one mmlwf.steps call."""
    for script in sorted((REPO / "scripts").glob("*.py")):
        if script.name == "demo_data.py":  # the demo generator has no CLI command
            continue
        text = script.read_text()
        assert "from mmlwf.steps import" in text, script.name
        assert "with log_to(snakemake.log[0]):" in text, script.name
