"""``mmlwf train`` on real data: a run directory, a falling loss, resume, bad settings."""

import csv
import json

import pytest

from mmlwf.cli import main

from .cli_fixtures import make_ethanol
from .conftest import shared_file


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    return make_ethanol(tmp_path_factory.mktemp("ethanol"), valid=40, test=860)  # 100 training structures


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
    # rMD17 has no dipoles, charges or dispersion: the "auto" physics resolved off, said and stored
    assert ("physics: charges+Coulomb off (data have neither dipoles nor atomic charges), D3 off (dataset does "
            "not include dispersion)") in (run / "train.log").read_text()
    model = json.loads((run / "model.json").read_text())["model"]
    assert (model["charges"], model["coulomb"], model["dispersion"]) == (False, False, False)
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


def test_weighted_mixture_trains_on_both_datasets_with_joint_element_energies(tmp_path):
    import json

    import numpy as np

    from mmlwf.convert import convert
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split, split_dataset
    from mmlwf.stats import element_counts, fit_element_energies
    from mmlwf.training.runner import run_training

    ethanol = convert([shared_file("rmd17_ethanol_train_1000.xyz")], tmp_path / "ethanol")
    formaldehyde = convert([shared_file("h2co_b3lyp_4001.npz")], tmp_path / "h2co")
    split_dataset(ethanol, tmp_path / "s1.npz", valid=980, test=0, seed=0)  # 20 training structures
    split_dataset(formaldehyde, tmp_path / "s2.npz", valid=3981, test=0, seed=0)  # 20
    config = {"model": {"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4},
              "training": {"batch_size": 5, "max_epochs": 1}}
    run = tmp_path / "run"
    summary = run_training(config, [ethanol, formaldehyde], [tmp_path / "s1.npz", tmp_path / "s2.npz"],
                           None, run, weights=[1.0, 0.5])
    assert summary["status"] == "completed"
    info = json.loads((run / "model.json").read_text())
    assert [m["weight"] for m in info["metadata"]["mixture"]] == [1.0, 0.5]
    # one set of reference energies, fitted on the union of both training splits
    elements = np.array([1, 6, 8])
    counts, energies = [], []
    for path, split in ((ethanol, "s1.npz"), (formaldehyde, "s2.npz")):
        ds = PackedDataset(path)
        train = load_split(tmp_path / split, len(ds)).train
        counts.append(element_counts(ds, train, elements))
        energies.append(np.asarray(ds.arrays["E"][train], np.float64))
    expected = fit_element_energies(np.concatenate(counts), np.concatenate(energies))
    got = [info["element_energies_by_Z"][str(z)] for z in elements]
    assert np.allclose(got, expected, rtol=1e-9)
