"""The workflow itself, driven through the snakemake CLI on tiny data in temporary directories.

Every run uses the repository's Snakefile (``-s``) with a temporary working directory
(``--directory``) holding the test's own ``config.yaml``, so nothing is written to the repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmlwf.analysis.plots import PLOT_FILES
from mmlwf.analysis.uncertainty_plots import UNCERTAINTY_PLOTS

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"

TINY_MODEL = {"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4}
TINY = {
    "demo": {"molecules": ["H2O", "CH4"], "n_per_molecule": 4, "seed": 1, "steps_between": 5},
    "labels": {"esp": {"sources": ["results/demo/demo.extxyz"], "basis": "sto-3g", "stride": 2,
                       "points": {"max_points": 100}}},
    "datasets": {
        "demo": {"sources": ["results/demo/demo.extxyz"], "split": {"valid": 2, "test": 2}},
        "water": {"sources": ["water.extxyz"], "split": {"valid": 1, "test": 1}},
        "esp": {"sources": ["results/labels/esp/packed"], "split": {"valid": 1, "test": 1}},
    },
    "experiments": {
        "tiny": {"dataset": "demo", "model": TINY_MODEL, "training": {"batch_size": 2, "max_epochs": 2}},
        "tiny_b": {"dataset": "demo", "model": TINY_MODEL,  # an ensemble: train -> evaluate -> report as any run
                   "training": {"batch_size": 2, "max_epochs": 2, "learning_rate": 3.0e-3}, "ensemble": {"size": 2}},
        "tiny_dcm": {"dataset": "esp", "model": {"type": "dcmnet", "n_dcm": 2, "features": 8, "num_iterations": 1,
                                                 "num_basis_functions": 4},
                     "training": {"batch_size": 2, "max_epochs": 2}},
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m snakemake`` on the repository's Snakefile in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # a loaded machine


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def write_extxyz(path: Path, n: int = 3, *, nan_force_at: int | None = None, close_at: int | None = None):
    """``n`` water molecules with energies and forces; optionally a NaN force or two atoms 0.03 Å apart."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i in range(n):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0.01 * i, 0], [-0.24, 0.93, 0.01 * i]])
        if i == close_at:
            atoms.positions[2] = atoms.positions[1] + [0.03, 0, 0]
        forces = np.full((3, 3), 0.1 * i)
        if i == nan_force_at:
            forces[2, 1] = np.nan
        atoms.calc = SinglePointCalculator(atoms, energy=-14.0 - 0.01 * i, forces=forces)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def tiny_config() -> dict:
    return json.loads(json.dumps(TINY))


def dry_run_with(workdir: Path, config: dict | None = None, **dataset_changes) -> str:
    """The output of ``snakemake -n`` with ``config`` (or TINY with the demo dataset's
    settings changed); the TINY config is restored afterwards."""
    if config is None:
        config = tiny_config()
        config["datasets"]["demo"].update(dataset_changes)
    write_config(workdir, config)
    try:
        plan = snakemake(workdir, "-n")
    finally:
        write_config(workdir, TINY)
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0, out[-4000:]
    return out


def planned_jobs(dry_run_output: str) -> set[tuple[str, str]]:
    """``{(rule, wildcards)}`` of the jobs a ``snakemake -n`` output plans (rule all left out)."""
    jobs, rule = set(), None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            if rule is not None:
                jobs.add((rule, ""))
            rule = stripped.split()[1].rstrip(":")
        elif rule is not None and stripped.startswith("wildcards:"):
            jobs.add((rule, stripped.split(":", 1)[1].strip()))
            rule = None
        elif rule is not None and not stripped:
            jobs.add((rule, ""))
            rule = None
    if rule is not None:
        jobs.add((rule, ""))
    return {job for job in jobs if job[0] != "all"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The tiny demo run end to end once: (workdir, completed process)."""
    workdir = tmp_path_factory.mktemp("demo")
    write_extxyz(workdir / "water.extxyz", n=5)
    write_config(workdir, TINY)
    return workdir, snakemake(workdir)


def test_demo_runs_end_to_end(demo_run):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((workdir / "results/datasets/demo/validation.json").read_text())
    assert report["ok"] is True and report["n_errors"] == 0
    assert report["n_molecules"] == 8
    manifest = json.loads((workdir / "results/datasets/demo/packed/manifest.json").read_text())
    assert manifest["n_molecules"] == 8
    assert manifest["elements"] == [1, 6, 8]
    assert {"E", "F", "R", "Z", "D", "q"} <= set(manifest["fields"])  # GFN2-xTB charges and dipoles
    for step in ("demo_data", "convert", "validate", "split", "stats"):
        assert (workdir / f"logs/{step}/demo.log").stat().st_size > 0, step
    assert (workdir / "results/benchmarks/convert/demo.tsv").exists()
    split = np.load(workdir / "results/datasets/demo/split.npz")
    assert sum(split[s].size for s in ("train", "valid", "test")) == 8
    stats = json.loads((workdir / "results/datasets/demo/stats.json").read_text())
    assert stats["n_train"] == split["train"].size and set(stats["element_energies"]) == {"H", "C", "O"}
    assert "batching" not in stats  # batch shapes are the training loader's (test_batch_shapes.py)
    history = (workdir / "results/runs/tiny/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3  # header + 2 epochs
    model = json.loads((workdir / "results/runs/tiny/model.json").read_text())
    assert model["model"]["features"] == 8 and set(model["element_energies"]) == {"H", "C", "O"}
    assert model["n_parameters"] > 0  # recorded at training time
    assert (workdir / "logs/train/tiny.log").stat().st_size > 0
    # evaluation on the test split, its plots, the comparison and the report
    for experiment in ("tiny", "tiny_b"):
        run = workdir / "results/runs" / experiment
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["subset"] == "test" and metrics["metrics"]["n_structures"] == 2
        assert np.isfinite(metrics["metrics"]["energy_mae_eV"])
        assert len((run / "predictions.csv").read_text().splitlines()) == 3  # header + 2 structures
        plots = sorted(p.name for p in (run / "plots").iterdir() if not p.name.startswith("."))
        extra = UNCERTAINTY_PLOTS if experiment == "tiny_b" else ()
        assert plots == sorted([*PLOT_FILES["physnet"], *extra])
        assert (workdir / f"logs/evaluate/{experiment}.log").stat().st_size > 0
    ensemble = json.loads((workdir / "results/runs/tiny_b/model.json").read_text())["ensemble"]
    assert ensemble["size"] == 2 and set(ensemble["scale"]) == {"energy", "forces"}
    calibration = json.loads((workdir / "results/runs/tiny_b/metrics.json").read_text())["calibration"]
    assert np.isfinite(calibration["scaled"]["forces_spread_spearman"])
    # the DCMNet chain: pyscf labels -> convert ... -> train -> evaluate (ESP errors, its plots)
    esp = json.loads((workdir / "results/datasets/esp/packed/manifest.json").read_text())
    assert esp["n_molecules"] == 4 and {"grid", "esp", "E", "D"} <= set(esp["fields"])
    assert "esp_rmse_kcal_per_mol_e" in (workdir / "results/runs/tiny_dcm/history.csv").read_text().splitlines()[0]
    metrics = json.loads((workdir / "results/runs/tiny_dcm/metrics.json").read_text())
    assert metrics["model_type"] == "dcmnet" and np.isfinite(metrics["metrics"]["esp_rmse_kcal_per_mol_e"])
    plots = sorted(p.name for p in (workdir / "results/runs/tiny_dcm/plots").iterdir() if not p.name.startswith("."))
    assert plots == sorted(PLOT_FILES["dcmnet"])
    table = (workdir / "results/report/comparison.csv").read_text().splitlines()
    assert len(table) == 4 and "tiny_b" in table[2] and "tiny_dcm" in table[3]
    html = (workdir / "results/report/index.html").read_text()
    n_images = 2 * len(PLOT_FILES["physnet"]) + len(UNCERTAINTY_PLOTS) + len(PLOT_FILES["dcmnet"])
    assert "tiny_dcm" in html and html.count("data:image/png;base64,") >= n_images


def test_snakemake_report_has_the_plots_under_captions(demo_run, tmp_path):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "report.zip"
    made = snakemake(workdir, "--report", str(out))
    assert made.returncode == 0, made.stderr[-4000:]
    import zipfile

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        text = "".join(zf.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for plot in PLOT_FILES["physnet"]:
        assert sum(n.endswith(plot) for n in names) >= 2, plot  # one per PhysNet experiment
    for plot in PLOT_FILES["dcmnet"]:
        assert sum(n.endswith(plot) for n in names) >= 1, plot
    assert any(n.endswith("index.html") for n in names) and any(n.endswith("comparison.csv") for n in names)
    assert "learning_curves" in text and "held-out split" in text  # plot caption (report/plot.rst)


def test_rerun_plans_nothing_and_params_trigger_only_downstream(demo_run):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = snakemake(workdir, "-n")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    # a changed conversion setting re-runs convert and validate, not the demo data
    out = dry_run_with(workdir, energy_unit="meV")
    assert "rule convert:" in out and "rule validate:" in out
    assert "rule demo_data:" not in out

    # a changed split seed re-runs split and stats (and the training on them) only
    out = dry_run_with(workdir, split={"seed": 7, "valid": 1, "test": 1})
    assert "rule split:" in out and "rule stats:" in out and "rule train:" in out
    assert "rule convert:" not in out and "rule validate:" not in out


def test_changed_learning_rate_plans_that_experiments_train_evaluate_and_the_report(demo_run):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = tiny_config()
    config["experiments"]["tiny_b"]["training"]["learning_rate"] = 1.0e-2
    jobs = planned_jobs(dry_run_with(workdir, config))
    assert jobs == {("train", "experiment=tiny_b"), ("evaluate", "experiment=tiny_b"), ("report", "")}


def test_added_experiment_plans_no_data_steps(demo_run):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = tiny_config()
    config["experiments"]["on_water"] = {"dataset": "water", "model": TINY_MODEL, "training": {"max_epochs": 1}}
    config["experiments"]["mixed"] = {"dataset": {"demo": 1.0, "water": 0.5}, "model": TINY_MODEL}
    config["sweeps"] = {"lr": {"base": "tiny", "grid": {"training.learning_rate": [0.01, 0.02]}}}
    out = dry_run_with(workdir, config)
    jobs = planned_jobs(out)
    new = ("on_water", "mixed", "lr-learning_rate_0.01", "lr-learning_rate_0.02")
    assert jobs == ({(rule, f"experiment={e}") for rule in ("train", "evaluate") for e in new}
                    | {("report", "")})
    # the mixture's training reads both datasets
    assert "results/datasets/demo/packed, results/datasets/water/packed" in out


def test_edited_source_file_plans_its_datasets_chain_only(demo_run):
    """Snakemake compares checksums of small inputs: an edit, not a mere touch, re-runs."""
    import ase.io

    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    water, demo = workdir / "water.extxyz", workdir / "results/demo/demo.extxyz"
    originals = {path: (path.read_bytes(), path.stat()) for path in (water, demo)}
    data_chain = ("convert", "validate", "split", "stats")
    try:
        write_extxyz(water, n=6)  # one more structure
        jobs = planned_jobs(dry_run_with(workdir, tiny_config()))
        assert jobs == {(rule, "dataset=water") for rule in data_chain}

        frames = ase.io.read(demo, ":")
        ase.io.write(demo, frames[::-1], format="extxyz")  # same structures, another order
        jobs = planned_jobs(dry_run_with(workdir, tiny_config()))
        # the demo file is the source of dataset demo and of the ESP label (dataset esp)
        assert jobs == ({(rule, f"dataset={d}") for rule in data_chain for d in ("water", "demo", "esp")}
                        | {("label", "label=esp")}
                        | {(rule, f"experiment={e}") for rule in ("train", "evaluate")
                           for e in ("tiny", "tiny_b", "tiny_dcm")}
                        | {("report", "")})
    finally:
        for path, (data, stat) in originals.items():
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_bad_data_stops_the_workflow_with_the_one_line_reason(tmp_path):
    write_extxyz(tmp_path / "nan.extxyz", nan_force_at=1)  # rejected by the converter
    write_extxyz(tmp_path / "close.extxyz", close_at=2)  # converts, rejected by the validator
    write_config(tmp_path, {"datasets": {"nan": {"sources": ["nan.extxyz"]},
                                         "close": {"sources": ["close.extxyz"]}}})
    proc = snakemake(tmp_path, "--keep-going")
    assert proc.returncode != 0

    nan_reason = "nan.extxyz: field 'F': structure 1: contains NaN or Inf"
    assert nan_reason in proc.stderr
    assert nan_reason in (tmp_path / "logs/convert/nan.log").read_text()
    assert not (tmp_path / "results/datasets/nan/packed").exists()

    close_reason = "error [too_close] field 'R' structure 2"
    assert close_reason in proc.stderr
    assert close_reason in (tmp_path / "logs/validate/close.log").read_text()
    assert not (tmp_path / "results/datasets/close/validation.json").exists()
    assert not list((tmp_path / "results/datasets").rglob("*.tmp*"))


@pytest.mark.parametrize(
    "datasets, expected",
    [
        ({"x": {"sources": ["a.extxyz"], "format": "xlsx"}},
         ["config 'datasets.x.format': 'xlsx' is not one of auto, npz"]),
        ({"a/b": {"sources": ["a.extxyz"]}}, ["config 'datasets.a/b': name 'a/b' is not allowed"]),
        ({"..": {"sources": ["a.extxyz"]}}, ["config 'datasets...': name '..' is not allowed"]),
        ({"x": {"sources": []}}, ["config 'datasets.x.sources': must not be empty"]),
        ({"x": {"sources": ["a.extxyz"], "keys": {"Energy": "e"}}}, ["config 'datasets.x.keys.Energy': unknown key"]),
        ({"x": {"sources": ["a.extxyz"], "units": "eV"}}, ["config 'datasets.x.units': unknown key"]),
    ],
    ids=["unknown-format", "slash-in-name", "dotdot-name", "empty-sources", "unknown-key", "unknown-setting"],
)
def test_bad_config_fails_before_any_job(tmp_path, datasets, expected):
    write_config(tmp_path, {"datasets": datasets})
    proc = snakemake(tmp_path)
    assert proc.returncode == 2
    for text in expected:
        assert text in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["experiments"]["tiny"]["model"].update(type="transformer"),
         ["config 'experiments.tiny.model.type': 'transformer' is not one of physnet, dcmnet"]),
        (lambda c: c["experiments"]["tiny"]["training"].update(learning_rate=-1.0),
         ["config 'experiments.tiny.training.learning_rate': must be > 0, got -1.0"]),
        (lambda c: c["datasets"]["demo"].update(split={"valid": 0.7, "test": 0.4}),
         ["config 'datasets.demo.split': valid + test fractions (0.7 + 0.4) leave no training data"]),
        (lambda c: c["experiments"]["tiny"].update(dataset="ethanol"),
         ["config 'experiments.tiny.dataset': 'ethanol' is not a dataset (known: demo, esp, water)"]),
        (lambda c: c["experiments"].update({"../up": {"dataset": "demo"}}),
         ["config 'experiments.../up': name '../up' is not allowed"]),
        (lambda c: c.update(sweeps={"s": {"base": "tiny", "grid": {"training.learning_rate": ["a/b"]}}}),
         ["config 'sweeps.s.grid.training.learning_rate': sweep value 'a/b'"]),
    ],
    ids=["unknown-model", "negative-lr", "fractions-over-1", "undefined-dataset", "path-in-name", "bad-sweep"],
)
def test_bad_experiment_config_fails_before_any_job_naming_the_key(tmp_path, change, expected):
    config = tiny_config()
    change(config)
    write_config(tmp_path, config)
    proc = snakemake(tmp_path)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_lint_is_clean(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out
    assert "Lints for" not in out


# ----------------------------------------------------------------------------- mmlwf.workflow


def test_log_to_tees_output_and_turns_bad_input_into_one_line(tmp_path, capsys):
    import logging

    from mmlwf.errors import DataError
    from mmlwf.workflow import log_to

    handlers, stdout = list(logging.getLogger().handlers), sys.stdout
    log = tmp_path / "logs" / "step.log"
    with log_to(log):
        print("to stdout")
        logging.getLogger("mmlwf.test").info("a log record")
    text = log.read_text()
    assert "to stdout" in text and "a log record" in text
    assert "to stdout" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exc:
        with log_to(log):
            raise DataError("contains NaN or Inf", path="x.extxyz", field="F", index=1)
    assert exc.value.code == 1
    line = "mmlwf: error: x.extxyz: field 'F': structure 1: contains NaN or Inf"
    assert line in log.read_text()
    assert line in capsys.readouterr().err

    with pytest.raises(RuntimeError):
        with log_to(log):
            raise RuntimeError("unexpected")
    assert "Traceback" in log.read_text()  # unexpected errors keep their traceback
    assert logging.getLogger().handlers == handlers and sys.stdout is stdout  # all restored
