import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlwf.cli import main
from mmlwf.errors import ConfigError, DataError
from mmlwf.packed import PackedWriter
from mmlwf.split import load_split, make_split, split_dataset
from mmlwf.structure import Structure


def _dataset(path, formulas):
    """One molecule per entry of ``formulas`` (lists of Z)."""
    rng = np.random.default_rng(0)
    with PackedWriter(path) as w:
        for i, Z in enumerate(formulas):
            Z = np.asarray(Z)
            w.add(Structure(Z=Z, R=rng.standard_normal((Z.size, 3)) * 2, E=-1.0 * Z.size, index=i).checked("m"))
    return path


@given(n=st.integers(3, 500), valid=st.floats(0, 0.45), test=st.floats(0, 0.45), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_disjoint_cover_and_sizes(n, valid, test, seed):
    parts = make_split(n, valid=valid, test=test, seed=seed)
    allidx = np.concatenate([parts["train"], parts["valid"], parts["test"]])
    assert np.array_equal(np.sort(allidx), np.arange(n))
    assert parts["valid"].size == round(valid * n) and parts["test"].size == round(test * n)
    assert all(np.all(np.diff(p) > 0) for p in parts.values())


def test_counts_and_bad_sizes():
    parts = make_split(100, valid=10, test=5, seed=0)
    assert parts["valid"].size == 10 and parts["test"].size == 5 and parts["train"].size == 85
    with pytest.raises(ConfigError, match="no training structures"):
        make_split(10, valid=5, test=5)
    with pytest.raises(ConfigError, match="whole number"):
        make_split(10, valid=2.5, test=0)
    with pytest.raises(ConfigError, match="--test"):
        make_split(10, valid=0.1, test=-0.1)


def test_same_inputs_byte_identical_file_and_seed_changes_it(tmp_path):
    ds = _dataset(tmp_path / "ds", [[8, 1, 1]] * 50)
    split_dataset(ds, tmp_path / "a.npz", valid=0.2, test=0.1, seed=3)
    split_dataset(ds, tmp_path / "b.npz", valid=0.2, test=0.1, seed=3)
    split_dataset(ds, tmp_path / "c.npz", valid=0.2, test=0.1, seed=4)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "c.npz").read_bytes()
    s = load_split(tmp_path / "a.npz", 50)
    assert s.sizes() == {"train": 35, "valid": 10, "test": 5} and s.seed == 3
    with pytest.raises(DataError, match="made for a dataset of 50 structures"):
        load_split(tmp_path / "a.npz", 49)


def test_group_by_formula_keeps_compositions_together(tmp_path):
    formulas = []
    rng = np.random.default_rng(1)
    for k in range(30):  # 30 compositions with 1..8 conformers each, atoms in any order
        base = [6] * (k % 5 + 1) + [1] * (k // 5 + 1)
        for _ in range(int(rng.integers(1, 9))):
            formulas.append(list(rng.permutation(base)))
    ds = _dataset(tmp_path / "ds", formulas)
    s = split_dataset(ds, tmp_path / "s.npz", valid=0.2, test=0.2, seed=0, group_by="formula")
    key = [tuple(sorted(f)) for f in formulas]
    sides = {}
    for name in ("train", "valid", "test"):
        for i in s[name]:
            assert sides.setdefault(key[i], name) == name, f"formula {key[i]} on two sides"
    assert s.valid.size > 0 and s.test.size > 0 and s.train.size > 0
    assert set(np.concatenate([s.train, s.valid, s.test]).tolist()) == set(range(len(formulas)))


def test_cli_split(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds", [[8, 1, 1]] * 20)
    assert main(["split", str(ds), "-o", str(tmp_path / "s.npz"), "--valid", "0.1", "--test", "2", "--seed", "1"]) == 0
    assert load_split(tmp_path / "s.npz").sizes() == {"train": 16, "valid": 2, "test": 2}
    assert main(["split", str(ds), "-o", str(tmp_path / "t.npz"), "--valid", "0.5", "--test", "0.5"]) != 0
    assert "no training structures" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()
