"""``mmlwf train`` on real data: a run directory, a falling loss, resume, bad settings."""

import csv

import pytest

from mmlwf.cli import main

from .conftest import shared_file


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    root = tmp_path_factory.mktemp("ethanol")
    ds = convert([shared_file("rmd17_ethanol_train_1000.xyz")], root / "ds")
    split_dataset(ds, root / "split.npz", valid=40, test=860, seed=0)  # 100 training structures
    write_stats(compute_stats(ds, root / "split.npz", batch_size=10), root / "stats.json")
    return root


def _train(root, run, *extra):
    return main(["train", "--data", str(root / "ds"), "--split", str(root / "split.npz"), "--stats",
                 str(root / "stats.json"), "-o", str(run),
                 "--set", "model.features=16", "--set", "model.num_iterations=2",
                 "--set", "training.batch_size=5", "--set", "training.learning_rate=5e-3", *extra])


def test_loss_goes_down_on_real_data_and_resume_continues(ethanol, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(ethanol, run, "--set", "training.max_epochs=5") == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < 0.8 * first, (first, last)
    assert float(rows[-1]["valid_forces_mae_eV_per_A"]) < float(rows[0]["valid_forces_mae_eV_per_A"])
    for name in ("config.yaml", "model.json", "train.log"):
        assert (run / name).exists()
    assert "XLA compilations" in (run / "train.log").read_text()
    # the same command with more epochs continues the run where it stopped
    assert _train(ethanol, run, "--set", "training.max_epochs=6") == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_bad_settings_one_line(ethanol, tmp_path, capsys):
    assert _train(ethanol, tmp_path / "r1", "--set", "training.learning_rate=-1") != 0
    err = capsys.readouterr().err.strip()
    assert "learning_rate" in err and len(err.splitlines()) == 1
    assert _train(ethanol, tmp_path / "r2", "--set", "model.wings=2") != 0
    err = capsys.readouterr().err.strip()
    assert "wings" in err and len(err.splitlines()) == 1
