"""The typed graph batch: pytree behaviour, the dict view, one padding convention for every
assembler (loader, calculator, compat, from_molecules, padding), and the constants."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from mmlwf import constants
from mmlwf.batch import GraphBatch, Pairs, as_batch, device_fields, empty, from_molecules, padding_like
from mmlwf.batching import BatchLoader, Budget
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure


def assert_padding_convention(b: GraphBatch) -> None:
    """Real entries first; the last graph and atom are padding; padding atoms and grid points
    belong to the last graph; padding pairs point at the last atom; padding holds zeros."""
    am, gm, pm = np.asarray(b.atom_mask), np.asarray(b.graph_mask), np.asarray(b.pairs.mask)
    n_g, n_a, n_p = int(gm.sum()), int(am.sum()), int(pm.sum())
    assert gm[:n_g].all() and not gm[n_g:].any() and not gm[-1]
    assert am[:n_a].all() and not am[n_a:].any() and not am[-1]
    assert pm[:n_p].all() and not pm[n_p:].any()
    assert np.all(np.asarray(b.atom_graph)[~am] == b.n_graphs - 1)
    assert np.all(np.asarray(b.pairs.dst)[~pm] == b.n_atom_slots - 1)
    assert np.all(np.asarray(b.pairs.src)[~pm] == b.n_atom_slots - 1)
    assert np.all(np.asarray(b.Z)[~am] == 0) and np.all(np.asarray(b.R)[~am] == 0)
    assert np.all(gm[np.asarray(b.atom_graph)[am]])  # real atoms in real graphs
    if b.grid is not None:
        gpm = np.asarray(b.grid_mask)
        assert np.all(np.asarray(b.grid_graph)[~gpm] == b.n_graphs - 1)
        assert np.all(gm[np.asarray(b.grid_graph)[gpm]])


WATER = {"Z": np.array([8, 1, 1]), "R": np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])}
METHANE = {"Z": np.array([6, 1, 1, 1, 1]),
           "R": np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                          [0.63, -0.63, -0.63]])}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "ds"
    with PackedWriter(path) as w:
        for i, (m, q) in enumerate([(WATER, 0.0), (METHANE, 1.0), (WATER, -1.0)]):
            w.add(Structure(Z=m["Z"], R=m["R"] + 0.01 * i, E=-float(i), F=np.ones((len(m["Z"]), 3)), Qtot=q,
                            index=i).checked("test"))
    return PackedDataset(path)


def test_loader_and_from_molecules_assemble_the_same_batch(dataset):
    loader = BatchLoader(dataset, cutoff=3.0, budgets=[Budget(4, 16, 64)], shuffle=False, prefetch=0)
    (got,) = list(loader.epoch(0))
    assert isinstance(got, GraphBatch) and got.pairs.cutoff == 3.0
    assert_padding_convention(got)
    mols = [{"Z": dataset[i]["Z"], "R": dataset[i]["R"], "Qtot": float(dataset.arrays["Qtot"][i])} for i in range(3)]
    ref = from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=64, cutoff=3.0)
    assert_padding_convention(ref)
    for name in ("Z", "R", "atom_graph", "atom_mask", "graph_mask", "Qtot", "n_atoms", "dst", "src", "pair_mask"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    # every pair within a molecule when no cutoff is given
    allpairs = from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=64)
    assert int(allpairs.pairs.mask.sum()) == 3 * 2 + 5 * 4 + 3 * 2
    with pytest.raises(ValueError, match="do not fit"):
        from_molecules(mols, n_graphs=3, n_atoms=16, n_pairs=64)  # no padding graph left
    with pytest.raises(ValueError, match="do not fit"):
        from_molecules(mols, n_graphs=4, n_atoms=11, n_pairs=64)  # no padding atom left


def test_batch_is_a_pytree_and_reads_like_the_dict_batches(dataset):
    loader = BatchLoader(dataset, cutoff=3.0, budgets=[Budget(4, 16, 64)], shuffle=False, prefetch=0)
    (b,) = list(loader.epoch(0))
    # the flat names of the dict batches
    assert b["dst"] is b.pairs.dst and b["pair_mask"] is b.pairs.mask and b["Z"] is b.Z
    assert "F" in b and "grid" not in b and "D" not in b and b.get("grid") is None
    with pytest.raises(KeyError):
        b["grid"]
    d = dict(b)
    assert {"Z", "R", "dst", "src", "pair_mask", "index", "dataset", "shape_id"} <= set(d)
    back = as_batch(d)
    assert jax.tree.structure(back) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(b)))
    with pytest.raises(KeyError, match="atom_mask"):
        as_batch({k: v for k, v in d.items() if k != "atom_mask"})
    with pytest.raises(KeyError, match="dst_idx"):
        as_batch({**d, "dst_idx": d["dst"]})
    # jit, tree maps and device transfer take it as it is
    dev = device_fields(b)
    assert dev.index is None and dev.dataset is None and dev.pairs.cutoff is None
    n_real = jax.jit(lambda x: x.pairs.mask.sum() + x.atom_mask.sum())(dev)
    assert int(n_real) == int(b.pairs.mask.sum() + b.atom_mask.sum())
    moved = jax.device_put(dev)
    assert isinstance(moved, GraphBatch) and isinstance(moved.pairs, Pairs)
    assert isinstance(jax.tree.map(lambda x: x, b), GraphBatch)


def test_padding_and_compat_follow_the_one_convention(dataset):
    from mmlwf.compat import PackedMemmapLoader, to_graph_batch

    loader = BatchLoader(dataset, cutoff=3.0, budgets=[Budget(4, 16, 64)], shuffle=False, prefetch=0)
    real = loader.assemble(0, np.arange(3), 0)
    pad = padding_like(real)
    assert_padding_convention(pad)
    no_mol = loader.assemble(0, np.zeros(0, np.int64), 0)
    for k in no_mol.keys():
        if k not in ("dataset", "shape_id", "pair_cutoff"):
            np.testing.assert_array_equal(pad[k], no_mol[k], err_msg=k)
    assert_padding_convention(empty(3, 5, 7, 4))

    old = next(PackedMemmapLoader(dataset, batch_size=3, shuffle=False).batches())
    typed = to_graph_batch(old)
    assert_padding_convention(typed)
    assert typed.n_graphs == 4 and typed.n_atom_slots == 12 and int(typed.pairs.mask.sum()) == 6 + 20 + 6
    mols = [{"Z": old["Z"][k][old["mask"][k]], "R": old["R"][k][old["mask"][k]]} for k in range(3)]
    ref = from_molecules(mols, n_graphs=4, n_atoms=12, n_pairs=32)
    for name in ("Z", "R", "atom_graph", "dst", "src"):
        np.testing.assert_array_equal(typed[name], ref[name], err_msg=name)
    np.testing.assert_array_equal(typed.E[:3], old["E"])


def test_constants_agree_with_ase_units():
    from ase import units

    k_e = units._e / (4 * math.pi * units._eps0) * 1e10  # eV Å / e²
    assert constants.COULOMB_CONSTANT == pytest.approx(k_e, rel=1e-12)
    assert constants.BOHR == pytest.approx(units.Bohr, rel=1e-9)
    assert constants.Z_TABLE_SIZE == constants.MAX_Z + 1 == 119 and constants.Z_RANGE == "1-118"
    from mmlwf.analysis import esp_fit
    from mmlwf.models import dcmnet
    from mmlwf.physics import coulomb

    assert coulomb.COULOMB_CONSTANT is dcmnet.COULOMB_CONSTANT is esp_fit.COULOMB_CONSTANT

