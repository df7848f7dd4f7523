"""Who owns the batch shapes: the training loaders (stats.json does not claim them).

Each loader counts the neighbours of its split once, within the cutoff it is given (the
model's pair cutoff in training), and derives its budgets from ``training.batch_atoms`` (the
default) or ``training.batch_size``.
The stats step counts no neighbours, so the neighbour counting over the training split runs
once per training (it ran in the stats step too before).
"""

from __future__ import annotations

import numpy as np
import pytest

from mmlwf.batching import BatchLoader, derive_budgets, molecule_sizes
from mmlwf.errors import ConfigError
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.split import load_split
from mmlwf.stats import compute_stats
from mmlwf.training import load_config
from mmlwf.training.data import make_loaders

# H2, O2, H2O, OH (test_stats.py's hand-computed case)
MOLS = [
    ([1, 1], -1.0, [[0, 0, 0], [0, 0, 0.74]]),
    ([8, 8], -10.0, [[0, 0, 0], [0, 0, 1.21]]),
    ([8, 1, 1], -10.5, [[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]]),
    ([8, 1], -5.5, [[0, 0, 0], [0, 0, 0.97]]),
]


@pytest.fixture
def small(tmp_path):
    from mmlwf.structure import Structure

    with PackedWriter(tmp_path / "ds") as w:
        for i, (Z, E, R) in enumerate(MOLS * 3):
            w.add(Structure(Z=np.array(Z), R=np.array(R, float), E=E, F=np.zeros((len(Z), 3)), index=i).checked("m"))
    np.savez(tmp_path / "s.npz", train=np.arange(8), valid=np.arange(8, 12), test=np.zeros(0, int),
             n_molecules=12, seed=0, group_by="none")
    return tmp_path / "ds", tmp_path / "s.npz"


def test_neighbour_counts_and_budgets_are_the_loaders(small):
    ds, split = small
    train = load_split(split).train[:4]
    # within 1.0 Å: H2 (1 pair), O2 none (1.21), H2O: two O-H at 0.96 Å, OH (0.97); ordered pairs
    sizes = molecule_sizes(PackedDataset(ds), train, 1.0)
    assert sizes[:, 2].max() == 4 and sizes[:, 2].mean() == pytest.approx((2 + 0 + 4 + 2) / 4)
    budgets = BatchLoader(PackedDataset(ds), train, batch_size=2, cutoff=1.0).budgets
    assert 1 <= len(budgets) <= 4 and budgets[0].n_atoms >= 4


def test_make_loaders_shapes_follow_training_batch_size_and_the_model_cutoff(small):
    ds, split = small
    config = load_config({"model": {"type": "physnet", "cutoff": 1.0}, "training": {"batch_size": 2, "seed": 3}})
    train_loader, valid_loader = make_loaders(ds, split, config, cutoff=1.5, prefetch=0)
    sp = load_split(split)
    for loader, idx in ((train_loader, sp.train), (valid_loader, sp.valid)):
        assert loader.cutoff == 1.5  # the cutoff given (the model's pair cutoff), not model.cutoff
        expected = derive_budgets(molecule_sizes(PackedDataset(ds), idx, 1.5), 2, 1, 3)
        assert loader.budgets == expected and len(expected) == 1  # one shape: one compilation
    # without a cutoff given: model.cutoff
    assert make_loaders(ds, split, config, prefetch=0)[0].cutoff == 1.0


def test_batches_of_atoms_are_the_default_and_batch_size_alone_batches_molecules(small):
    from mmlwf.training.config import config_changes

    ds, split = small
    default = load_config({"model": {"type": "physnet"}})
    assert (default.training.batch_atoms, default.training.batch_size) == (88, None)
    loader = make_loaders(ds, split, default, cutoff=1.0, prefetch=0)[0]
    assert loader.budgets[0].n_atoms == 88
    by_molecules = load_config({"model": {"type": "physnet"}, "training": {"batch_size": 2}})
    assert (by_molecules.training.batch_atoms, by_molecules.training.batch_size) == (None, 2)
    loader = make_loaders(ds, split, by_molecules, cutoff=1.0, prefetch=0)[0]
    assert loader.budgets[0] == max(derive_budgets(molecule_sizes(PackedDataset(ds), load_split(split).train, 1.0), 2))
    # a run stored before batch_atoms existed batched by molecules: resuming it with today's
    # defaults is another config, with its batch_size it is the same
    stored = {**by_molecules.to_dict(), "training": {k: v for k, v in by_molecules.to_dict()["training"].items()
                                                      if k != "batch_atoms"}}
    assert config_changes(stored, default.to_dict()) == ["training.batch_atoms: None -> 88",
                                                          "training.batch_size: 2 -> None"]
    assert config_changes(stored, by_molecules.to_dict()) == []
    for training, problem in (({"batch_size": 2, "batch_atoms": 40}, "are both set"),
                              ({"batch_atoms": None}, "are both null"), ({"batch_atoms": 1}, ">= 2")):
        with pytest.raises(ConfigError, match=problem):
            load_config({"model": {"type": "physnet"}, "training": training})


def test_a_batch_of_atoms_holds_the_biggest_molecule_and_one_size_is_given():
    sizes = np.array([[1, 21, 400, 0], [1, 9, 72, 0]])
    assert max(derive_budgets(sizes, batch_atoms=88)).n_atoms == 88
    assert max(derive_budgets(sizes, batch_atoms=10)).n_atoms == 24  # 21 atoms + the padding atom, to 8
    assert max(derive_budgets(sizes, batch_atoms=89)).n_atoms == 96
    for kwargs in ({}, {"batch_size": 2, "batch_atoms": 40}):
        with pytest.raises(ConfigError, match="give one of batch_size"):
            derive_budgets(sizes, **kwargs)


def test_the_neighbours_of_the_split_are_counted_once(small, monkeypatch):
    import mmlwf.batching.loader as loader_module

    counted = []
    real = loader_module.count_pairs

    def counting(R, offsets, cutoff):
        counted.append(len(offsets) - 1)
        return real(R, offsets, cutoff)

    monkeypatch.setattr(loader_module, "count_pairs", counting)
    ds, split = small
    stats = compute_stats(ds, split)
    assert counted == [] and "neighbours" not in stats and "batching" not in stats
    make_loaders(ds, split, load_config({"model": {"type": "physnet"}, "training": {"batch_size": 2}}), prefetch=0)
    assert sum(counted) == 8 + 4  # the training split and the validation split, once each


@pytest.mark.parametrize("cutoff, expected", [
    (-1.0, "cutoff must be a positive number of Å, got -1.0"),
    (float("nan"), "got nan"),
    (0.0, "got 0.0"),
])
def test_a_cutoff_that_is_not_a_positive_number(small, cutoff, expected):
    ds, split = small
    with pytest.raises(ConfigError, match=expected):
        make_loaders(ds, split, load_config({"model": {"type": "physnet"}}), cutoff=cutoff)


def test_n_shapes_must_be_positive(small):
    ds, _ = small
    with pytest.raises(ConfigError, match="n_shapes must be >= 1, got 0"):
        BatchLoader(PackedDataset(ds), cutoff=1.0, n_shapes=0)
