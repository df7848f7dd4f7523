"""What a user sees: a quiet ``mmlwf train`` (a progress bar, summary lines, per-epoch lines
only with ``-v``) and ``mmlwf evaluate`` (no absl/orbax warnings, no JAX platform messages),
``mmlwf info`` naming the source format (extxyz), and the run-cost columns of history.csv."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.cli import main
from mmlwf.training.history import COST_COLUMNS
from mmlwf.training.progress import TrainingProgress, summary_line

from .conftest import shared_file

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) train_loss=")  # a train.log line
SUMMARY = re.compile(r"^epoch (\d+)/(\d+)  loss: train ")  # a terminal summary line
NOISE = re.compile(r"absl|read.only|\btpu\b|libtpu|warning|traceback|platform", re.IGNORECASE)


def user_env() -> dict:
    """The environment of a user's shell: no platform forced, so JAX probes as it does there."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def mmlwf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmlwf.cli", *map(str, args)], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=900)


def assert_quiet(text: str) -> None:
    found = NOISE.findall(text)
    assert not found, f"noise {found} in:\n{text}"


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    root = tmp_path_factory.mktemp("ethanol")
    ds = convert([shared_file("rmd17_ethanol_train_1000.xyz")], root / "ds")
    split_dataset(ds, root / "split.npz", valid=10, test=950, seed=0)  # 40 training structures
    write_stats(compute_stats(ds, root / "split.npz"), root / "stats.json")
    return root


def train_args(root: Path, run: Path, epochs: int) -> list[str]:
    return ["train", "--data", root / "ds", "--split", root / "split.npz", "--stats", root / "stats.json",
            "-o", run, "--set", "model.features=8", "--set", "model.num_iterations=1",
            "--set", "training.batch_size=10", "--set", f"training.max_epochs={epochs}"]


def test_train_and_evaluate_terminal_output(ethanol, tmp_path):
    run = tmp_path / "run"
    got = mmlwf(*train_args(ethanol, run, 4), "--summary-every", "600", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    err = got.stderr.splitlines()
    assert_quiet(got.stderr + got.stdout)
    # no line per epoch: a summary line after the first and the last epoch, the notes, the result
    assert not any(EPOCH_LINE.search(line) for line in err), got.stderr
    assert [SUMMARY.match(line).groups() for line in err if SUMMARY.match(line)] == [("1", "4"), ("4", "4")]
    first = next(line for line in err if SUMMARY.match(line))
    assert re.search(r"valid: energy MAE [\d.]+ meV, forces MAE [\d.]+ meV/Å", first), first
    assert re.search(r"[\d.]+ structures/s, [\d.]+ s elapsed$", first), first
    assert any(line.startswith("new run in ") for line in err) and err[-1].startswith("completed after epoch 4")
    assert len(err) <= 7, got.stderr
    assert got.stdout.startswith("completed: 4 epochs") and len(got.stdout.splitlines()) == 1
    # the full record stays in train.log and history.csv
    log = (run / "train.log").read_text()
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(log)] == [1, 2, 3, 4]
    assert len(list(csv.DictReader(open(run / "history.csv")))) == 4

    got = mmlwf("evaluate", run, "--data", ethanol / "ds", "--split", ethanol / "split.npz",
                "-o", tmp_path / "metrics.json", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stderr == "" and len(got.stdout.splitlines()) == 1, got.stderr + got.stdout


def test_verbose_shows_every_epoch(ethanol, tmp_path, capsys):
    assert main([*map(str, train_args(ethanol, tmp_path / "run", 2)), "-v"]) == 0
    err = capsys.readouterr().err
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(err)] == [1, 2]
    assert not any(SUMMARY.match(line) for line in err.splitlines())  # the epoch lines instead
    assert "XLA compilations" in err
    assert_quiet(err)


def test_rule_log_has_mmlwf_lines_not_other_libraries_info(tmp_path):
    """The workflow's log_to: mmlwf's INFO lines, not JAX's (its TPU probe) or other INFO."""
    code = ("import logging, sys\n"
            "from mmlwf.workflow import log_to\n"
            "with log_to(sys.argv[1]):\n"
            "    import jax\n"
            "    jax.devices()\n"
            "    logging.getLogger('jax').info('a jax info line')\n"
            "    logging.getLogger('orbax').warning('an orbax warning')\n"
            "    logging.getLogger('mmlwf.training').info('an mmlwf line')\n")
    got = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rule.log")], cwd=tmp_path, env=user_env(),
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    log = (tmp_path / "rule.log").read_text()
    assert "an mmlwf line" in log and "an orbax warning" in log  # warnings of any library still show
    assert "a jax info line" not in log and not re.search(r"\btpu\b|libtpu", log, re.IGNORECASE), log
    assert got.stderr.count("an mmlwf line") == 1  # the terminal gets it once


def test_forced_bar_off_a_terminal_does_not_fill_a_log(capsys):
    progress = TrainingProgress(True, summary_every=60)
    assert not progress.tty and progress.want_bar
    for epoch in range(20):
        progress.start_epoch(epoch, 20, 100, 0)
        for _ in range(100):
            progress.advance(1, 0.5, 0.6)
    progress.close()
    err = capsys.readouterr().err
    assert 0 < err.count("\r") <= 3, err[:500]  # the first draw and the close, not 2000 redraws
    assert TrainingProgress().want_bar is False  # by default only on a terminal


def test_summary_lines_by_time():
    progress = TrainingProgress(False, summary_every=3600)
    assert [progress.summary_due(e, final=e == 5) for e in range(1, 6)] == [True, False, False, False, True]
    progress = TrainingProgress(False, summary_every=0)
    assert all(progress.summary_due(e, final=False) for e in range(1, 4))


def test_summary_line_field_units_and_best():
    row = {"epoch": 3, "train_loss": 0.5, "valid_loss": 0.61, "valid_energy_mae_eV": 0.0121,
           "valid_forces_mae_eV_per_A": 0.0482, "valid_dipole_mae_eA": 0.2081943, "wall_time_s": 31.42,
           "train_structures_per_s": 2100.0}
    line = summary_line(row, 10, 3, 0.61)
    assert line == ("epoch 3/10  loss: train 0.5, valid 0.61 (best)  valid: energy MAE 12.1 meV, "
                    "forces MAE 48.2 meV/Å, dipole MAE 1 D  2100 structures/s, 31.4 s elapsed")
    line = summary_line({"epoch": 4, "train_loss": 0.4, "train_esp_rmse_kcal_per_mol_e": 1.5, "wall_time_s": 2.0},
                        10, 2, 0.3)
    assert line == "epoch 4/10  loss: train 0.4 (best 0.3 at epoch 2)  train: ESP RMSE 1.5 kcal/(mol·e)  2.0 s elapsed"


# ----------------------------------------------------------------------------- info


def test_info_names_the_format_asked_for(tmp_path):
    import ase.io
    from ase.build import molecule

    from mmlwf.convert import convert
    from mmlwf.info import dataset_info, format_info

    frames = []
    for k in range(3):
        atoms = molecule("H2O")
        atoms.positions += 0.01 * k
        atoms.info["energy"] = -14.0 - k
        frames.append(atoms)
    ase.io.write(tmp_path / "water.xyz", frames, format="extxyz")
    (tmp_path / "water.data").write_bytes((tmp_path / "water.xyz").read_bytes())
    for name, fmt in (("auto", None), ("asked", "extxyz"), ("other_suffix", "extxyz")):
        src = tmp_path / ("water.data" if name == "other_suffix" else "water.xyz")
        out = convert([src], tmp_path / name, fmt=fmt)
        info = dataset_info(out)
        assert info["sources"][0]["format"] == "extxyz", name
        row = next(line for line in format_info(info).splitlines() if line.split()[:1] == [src.name])
        assert row.split()[1] == "extxyz", row
    # a dataset from before: its source recorded as "ase", the converter the --format asked for
    info = dataset_info(tmp_path / "asked")
    info["sources"][0]["format"] = "ase"
    row = next(line for line in format_info(info).splitlines() if line.split()[:1] == ["water.xyz"])
    assert row.split()[1] == "extxyz"
    got = subprocess.run([sys.executable, "-m", "mmlwf.cli", "info", str(tmp_path / "auto")], env=user_env(),
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and " ase " not in got.stdout and "extxyz" in got.stdout, got.stdout


# ----------------------------------------------------------------------------- cost columns


def test_cost_columns_of_history(tmp_path):
    from tests.test_training import BASE, loaders, make_data, run_training

    from mmlwf.packed import PackedDataset
    from mmlwf.training import load_config, read_history

    data = make_data(tmp_path / "data")
    summary = run_training(tmp_path / "run", data, ["training.max_epochs=3"])
    with open(tmp_path / "run" / "history.csv", newline="") as fh:
        header = next(csv.reader(fh))
    at = header.index("wall_time_s")
    assert tuple(header[at + 1:at + 1 + len(COST_COLUMNS)]) == COST_COLUMNS
    rows = read_history(tmp_path / "run" / "history.csv")
    # what the epochs' batches hold, from the loader's plan, the molecule sizes and the budgets
    tl, _ = loaders(data, load_config(BASE))
    n_atoms = np.asarray(PackedDataset(data / "packed").n_atoms)
    walls = [0.0] + [r["wall_time_s"] for r in rows]
    for e, row in enumerate(rows):
        plan = tl.plan(e)
        structures = sum(len(pos) for _, pos, _ in plan)
        atoms = sum(int(n_atoms[tl.members[k].indices[pos]].sum()) for k, pos, _ in plan)
        slots = sum(tl.budgets[shape].n_atoms for _, _, shape in plan)
        assert row["padding_efficiency"] == pytest.approx(atoms / slots, rel=1e-12)
        assert 0.3 < row["padding_efficiency"] < 1.0
        assert row["train_atoms_per_s"] / row["train_structures_per_s"] == pytest.approx(atoms / structures, rel=1e-9)
        # the training loop is part of the epoch: at least as fast as the epoch's wall time says
        assert row["train_structures_per_s"] >= structures / (walls[e + 1] - walls[e])
        assert row["train_structures_per_s"] < 1e8
    counts = [r["xla_compilations"] for r in rows]
    assert all(isinstance(c, int) for c in counts) and counts == sorted(counts)
    assert summary["train_step_shapes"] + summary["eval_step_shapes"] <= counts[-1] <= summary["compilations"]
