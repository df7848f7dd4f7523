import numpy as np
import pytest

from mmlwf.compat import PackedMemmapLoader, split_loader
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure


@pytest.fixture
def ds_path(tmp_path):
    rng = np.random.default_rng(0)
    with PackedWriter(tmp_path / "ds") as w:
        for i in range(37):
            k = int(rng.integers(2, 9))
            w.add(Structure(Z=rng.integers(1, 9, k), R=rng.standard_normal((k, 3)), E=float(i),
                            F=rng.standard_normal((k, 3)), Qtot=1.0, index=i).checked("m"))
    return tmp_path / "ds"


def test_padded_batches_match_rows(ds_path):
    ds = PackedDataset(ds_path)
    loader = PackedMemmapLoader(ds_path, batch_size=5, seed=1)
    seen = []
    for b in loader.batches():
        B, A = b["Z"].shape
        assert b["R"].shape == (B, A, 3) and b["F"].shape == (B, A, 3) and b["mask"].shape == (B, A)
        assert b["E"].shape == (B,) and b["Qtot"].shape == (B,)
        for k in range(B):
            i = int(b["E"][k])  # E holds the structure index here
            row = ds[i]
            n = row["Z"].size
            assert b["mask"][k].sum() == n and b["mask"][k, :n].all()
            np.testing.assert_array_equal(b["Z"][k, :n], row["Z"])
            np.testing.assert_array_equal(b["R"][k, :n], row["R"])
            assert np.all(b["Z"][k, n:] == 0) and np.all(b["R"][k, n:] == 0)
            seen.append(i)
    assert sorted(seen) == list(range(37))
    assert len(loader) == 8


def test_num_atoms_pads_to_fixed_width(ds_path):
    loader = PackedMemmapLoader(ds_path, batch_size=4, shuffle=False)
    assert {b["Z"].shape[1] for b in loader.batches(num_atoms=10)} == {10}
    with pytest.raises(ValueError, match="more than num_atoms"):
        next(loader.batches(num_atoms=1))


def test_physnet_format_pair_offsets(ds_path):
    loader = PackedMemmapLoader(ds_path, batch_size=4, shuffle=False)
    b = next(loader.batches(num_atoms=8, physnet_format=True))
    B, A = 4, 8
    assert b["Z"].shape == (B * A,) and b["R"].shape == (B * A, 3) and b["N"].shape == (B,)
    assert b["dst_idx"].shape == (B * A * (A - 1),) == b["src_idx"].shape
    # pairs stay inside each molecule's block of A slots and never pair an atom with itself
    assert np.all(b["dst_idx"] // A == b["src_idx"] // A) and np.all(b["dst_idx"] != b["src_idx"])
    assert np.all(b["batch_segments"] == np.repeat(np.arange(B), A))
    assert np.all(b["batch_mask"] == (b["atom_mask"][b["dst_idx"]] & b["atom_mask"][b["src_idx"]]))
    assert b["batch_mask"].sum() == sum(n * (n - 1) for n in b["N"])
    assert b["atom_mask"].sum() == b["N"].sum()


def test_split_loader_disjoint(ds_path):
    loader = PackedMemmapLoader(ds_path, batch_size=4)
    train, valid = split_loader(loader, train_fraction=0.8, seed=3)
    tr = [int(e) for b in train.batches() for e in b["E"]]
    va = [int(e) for b in valid.batches() for e in b["E"]]
    assert len(tr) == 30 and len(va) == 7 and not set(tr) & set(va)
    assert sorted(tr + va) == list(range(37))
