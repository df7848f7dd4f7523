"""Element reference energies chosen by the user: isolated-atom files, numbers per element, the fit
(refused or warned about when the compositions do not determine it), recorded with their origin."""

from __future__ import annotations

import json
import logging

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mmlwf.cli import main
from mmlwf.element_energies import check_choice, fit_rank, merge_references
from mmlwf.errors import ConfigError, DataError
from mmlwf.stats import compute_stats, isolated_atom_energies

from .conftest import shared_file

#: the BOTNet/rMD17 ethanol isolated atoms (../shared/data/mlff/ethanol_isolated_atoms.xyz), eV
ETHANOL_E0 = {"H": -13.568422383046626, "C": -1025.2770951782686, "O": -2035.5709809589698,
              "N": -1479.0665594928669}


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    """rMD17 ethanol (one composition, C2H6O): packed dataset and a split of 100 training structures."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset

    root = tmp_path_factory.mktemp("ethanol")
    ds = convert([shared_file("rmd17_ethanol_train_1000.xyz")], root / "ds")
    split_dataset(ds, root / "s.npz", valid=800, test=100, seed=0)
    return ds, root / "s.npz"


def _atoms_file(path, energies: dict[str, float], extra: list[Atoms] = ()):
    frames = []
    for symbol, e in energies.items():
        a = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        a.calc = SinglePointCalculator(a, energy=e)
        frames.append(a)
    for a in extra:
        a.calc = SinglePointCalculator(a, energy=-1.0)
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return path


def _counts_and_energies(ds, split):
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split
    from mmlwf.stats import element_counts

    d = PackedDataset(ds)
    train = load_split(split, len(d)).train
    return element_counts(d, train, np.array([1, 6, 8])), np.asarray(d.arrays["E"][train], np.float64)


def test_the_shared_isolated_atom_file_reads_as_written():
    got = isolated_atom_energies(shared_file("ethanol_isolated_atoms.xyz"))
    assert got == {1: ETHANOL_E0["H"], 6: ETHANOL_E0["C"], 8: ETHANOL_E0["O"], 7: ETHANOL_E0["N"]}


def test_element_energies_from_an_isolated_atom_file_equal_the_files(ethanol):
    ds, split = ethanol
    path = shared_file("ethanol_isolated_atoms.xyz")
    st = compute_stats(ds, split, element_energies=path)
    # only the training data's elements (N is in the file, not in ethanol)
    assert st["element_energies"] == {s: ETHANOL_E0[s] for s in ("H", "C", "O")}
    assert st["element_energies_by_Z"] == {"1": ETHANOL_E0["H"], "6": ETHANOL_E0["C"], "8": ETHANOL_E0["O"]}
    src = st["element_energies_source"]
    assert src["kind"] == "isolated_atoms" and src["file"] == str(path) and len(src["sha256"]) == 64
    # the residuals follow the chosen references: ethanol's atomisation energy per atom (-4.7 eV
    # with these references; experiment about -3.7)
    counts, E = _counts_and_energies(ds, split)
    resid = (E - counts @ np.array([ETHANOL_E0[s] for s in ("H", "C", "O")])) / counts.sum(axis=1)
    assert st["energy_residual_per_atom"]["mean"] == pytest.approx(resid.mean(), abs=1e-9)
    assert st["energy_residual_per_atom"]["std"] == pytest.approx(resid.std(), abs=1e-9)
    assert -5.0 < resid.mean() < -4.0
    # numbers in the config: the same, recorded as such
    st2 = compute_stats(ds, split, element_energies={"H": ETHANOL_E0["H"], "C": ETHANOL_E0["C"],
                                                     "O": ETHANOL_E0["O"]})
    assert st2["element_energies"] == st["element_energies"] and st2["element_energies_source"] == {"kind": "config"}


def test_a_single_composition_fit_is_refused_and_auto_warns(ethanol, caplog):
    ds, split = ethanol
    counts, E = _counts_and_energies(ds, split)
    assert fit_rank(counts) == 1
    with pytest.raises(DataError, match="determine only 1 combination.*give isolated-atom energies") as err:
        compute_stats(ds, split, element_energies="fit")
    assert "\n" not in str(err.value) and str(ds) in str(err.value)
    with caplog.at_level(logging.WARNING, logger="mmlwf.stats"):
        st = compute_stats(ds, split)  # the default: auto
    assert "give isolated-atom energies" in caplog.text
    assert st["element_energies_source"] == {"kind": "fit", "requested": "auto", "ridge": 1e-8, "rank": 1,
                                             "n_elements": 3, "determined": False}
    # the minimum-norm split: proportional to the counts, summing to the mean energy
    e = np.array([st["element_energies"][s] for s in ("H", "C", "O")])
    assert counts[0] @ e == pytest.approx(E.mean(), rel=1e-6)
    assert np.allclose(e / e[2], [6, 2, 1], rtol=1e-6)


def test_a_fit_of_several_compositions_is_determined(tmp_path):
    from mmlwf.packed import PackedWriter
    from mmlwf.structure import Structure

    with PackedWriter(tmp_path / "ds") as w:
        for i, (Z, E) in enumerate((([1, 1], -1.0), ([8, 8], -10.0), ([8, 1, 1], -10.5), ([8, 1], -5.5))):
            w.add(Structure(Z=np.array(Z), R=np.arange(3 * len(Z), dtype=float).reshape(-1, 3), E=E,
                            index=i).checked("m"))
    np.savez(tmp_path / "s.npz", train=np.arange(4), valid=np.zeros(0, int), test=np.zeros(0, int),
             n_molecules=4, seed=0, group_by="none")
    fit = compute_stats(tmp_path / "ds", tmp_path / "s.npz", element_energies="fit")
    auto = compute_stats(tmp_path / "ds", tmp_path / "s.npz")
    assert fit["element_energies_source"]["determined"] and fit["element_energies_source"]["rank"] == 2
    assert fit["element_energies"] == auto["element_energies"]


def test_bad_isolated_atom_files_give_one_line(ethanol, tmp_path):
    ds, split = ethanol
    cases = {
        "missing": (_atoms_file(tmp_path / "m.xyz", {"H": -13.6, "C": -1025.3}), r"m\.xyz.*no reference energy for O"),
        "two atoms": (_atoms_file(tmp_path / "t.xyz", {"H": -13.6}, [Atoms("OH", positions=[[0, 0, 0], [0, 0, 1]])]),
                      r"t\.xyz: field 'Z': structure 1: 2 atoms"),
        "twice": (_atoms_file(tmp_path / "d.xyz", {"H": -13.6}, [Atoms("H", positions=[[0, 0, 0]])]),
                  r"d\.xyz: field 'Z': structure 1: element Z = 1 again"),
    }
    for name, (path, pattern) in cases.items():
        with pytest.raises(DataError, match=pattern) as err:
            compute_stats(ds, split, element_energies=path)
        assert "\n" not in str(err.value), name
    with pytest.raises(DataError, match="no reference energy for O"):
        compute_stats(ds, split, element_energies={"H": -13.6, "C": -1025.3})
    with pytest.raises(DataError, match="no such file"):
        compute_stats(ds, split, element_energies=tmp_path / "absent.xyz")


@pytest.mark.parametrize("value, words", [("fitt", "did you mean 'fit'"), ("", "expected"),
                                          ({"Hx": -1.0}, "'Hx' is not an element symbol"),
                                          ({"H": "a lot"}, "finite energy"), (3.0, "expected")])
def test_choices_are_checked_before_they_become_paths(value, words):
    with pytest.raises(ConfigError, match=words):
        check_choice(value)


def test_the_workflow_setting_is_checked_and_the_default_is_auto():
    from mmlwf.settings import StatsSettings
    from mmlwf.settings.base import parse

    assert StatsSettings().element_energies == "auto"
    assert parse(StatsSettings, {"element_energies": {"H": -13.57}}).element_energies == {"H": -13.57}
    assert parse(StatsSettings, {"element_energies": "atoms.xyz"}).element_energies == "atoms.xyz"
    with pytest.raises(ConfigError, match=r"element_energies: .*did you mean 'fit'"):
        parse(StatsSettings, {"element_energies": "fitt"})


def test_cli_stats_takes_the_choice_and_refuses_with_exit_2(ethanol, tmp_path, capsys):
    ds, split = ethanol
    out = tmp_path / "st.json"
    argv = ["stats", str(ds), "--split", str(split), "-o", str(out)]
    path = shared_file("ethanol_isolated_atoms.xyz")
    assert main([*argv, "--element-energies", str(path)]) == 0
    assert json.loads(out.read_text())["element_energies_source"]["kind"] == "isolated_atoms"
    capsys.readouterr()
    assert main([*argv, "--element-energies", "fit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give isolated-atom energies" in err


def test_mixture_references_agree_or_are_refused():
    iso = {"kind": "isolated_atoms", "file": "a.xyz"}
    merged, source = merge_references([("a", {"1": -13.6, "8": -2035.6}, iso), ("b", {"1": -13.6, "6": -1025.3}, iso)])
    assert merged == {"1": -13.6, "8": -2035.6, "6": -1025.3} and source["kind"] == "mixture"
    assert merge_references([("a", {"1": -1.0}, {"kind": "fit"}), ("b", {"1": -2.0}, None)]) is None
    with pytest.raises(ConfigError, match="one level of theory"):
        merge_references([("a", {"1": -13.6}, iso), ("b", {"1": -13.0}, iso)])
    with pytest.raises(ConfigError, match="b fitted"):
        merge_references([("a", {"1": -13.6}, iso), ("b", {"1": -13.0}, {"kind": "fit"})])


def test_model_json_carries_the_references_and_their_origin(ethanol, tmp_path):
    from mmlwf.training.runner import run_training

    ds, split = ethanol
    from mmlwf.stats import write_stats

    stats = write_stats(compute_stats(ds, split, element_energies=shared_file("ethanol_isolated_atoms.xyz")),
                        tmp_path / "stats.json")
    config = {"model": {"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4},
              "training": {"batch_size": 50, "max_epochs": 1}}
    run_training(config, ds, split, stats, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["element_energies"] == {s: ETHANOL_E0[s] for s in ("H", "C", "O")}
    assert info["metadata"]["element_energies_source"]["kind"] == "isolated_atoms"


def test_the_workflow_config_check_names_a_misspelt_choice():
    from mmlwf.workflow_config import resolve_workflow_config

    config = {"datasets": {"d": {"sources": ["a.xyz"], "stats": {"element_energies": "fitt"}}}}
    with pytest.raises(ConfigError, match=r"config 'datasets\.d\.stats\.element_energies': 'fitt' .*did you mean 'fit'"):
        resolve_workflow_config(config)
    config["datasets"]["d"]["stats"]["element_energies"] = {"H": -13.57}
    assert resolve_workflow_config(config)["datasets"]["d"]["stats"]["element_energies"] == {"H": -13.57}
