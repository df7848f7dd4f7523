"""A wrong workflow config stops ``snakemake -n`` before any job: one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = {"dataset": "water", "model": {"type": "physnet", "features": 8}, "training": {"max_epochs": 2}}


def config(**changes) -> dict:
    """A small valid config (no demo data) with ``changes`` applied to its sections."""
    out = {"datasets": {"water": {"sources": ["water.extxyz"], "format": "extxyz"}},
           "experiments": {"tiny": dict(EXPERIMENT)}}
    for key, value in changes.items():
        out[key] = value
    return out


def dry_run(workdir: Path, cfg: dict) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (workdir / "water.extxyz").write_text("3\nProperties=species:S:1:pos:R:3 energy=-1.0\nO 0 0 0\nH 1 0 0\nH 0 1 0\n")
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


CASES = {
    "unknown-top-level-key": (
        {**config(), "experiment": {}},
        "config 'experiment': unknown key (did you mean 'experiments'?)"),
    "misspelled-dataset-key": (
        config(datasets={"water": {"sources": ["water.extxyz"], "fromat": "extxyz"}}),
        "config 'datasets.water.fromat': unknown key (did you mean 'format'?)"),
    "unknown-unit": (
        config(datasets={"water": {"sources": ["water.extxyz"], "energy_unit": "kcal"}}),
        "config 'datasets.water.energy_unit': unknown energy unit 'kcal' (did you mean 'kcal/mol'?)"),
    "unknown-model-key": (
        config(experiments={"tiny": {**EXPERIMENT, "model": {"type": "physnet", "feature": 8}}}),
        "config 'experiments.tiny.model.feature': unknown key (did you mean 'features'?)"),
    "negative-features": (
        config(experiments={"tiny": {**EXPERIMENT, "model": {"type": "physnet", "features": -5}}}),
        "config 'experiments.tiny.model.features': must be >= 1, got -5"),
    "model-rule": (
        config(experiments={"tiny": {**EXPERIMENT, "model": {"charges": False, "coulomb": True}}}),
        "config 'experiments.tiny.model.coulomb': needs charges: set charges: true"),
}


def test_the_valid_config_plans_its_jobs(tmp_path):
    proc = dry_run(tmp_path, config())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule train:" in proc.stdout


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_stops_the_dry_run_with_one_line(tmp_path, name):
    cfg, message = CASES[name]
    proc = dry_run(tmp_path, cfg)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert out.count(message) == 1, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    # besides the message, only Snakemake's own line about the profile
    assert [line for line in lines if message not in line and "workflow specific profile" not in line] == [], out
    assert "Traceback" not in out and "rule " not in out and "Job stats" not in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
