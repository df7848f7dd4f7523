import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlwf.batching import BatchLoader, Budget, count_pairs, neighbour_pairs
from mmlwf.batching.neighbours import ALL_PAIRS_MAX_ATOMS
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure


def brute_pairs(R, offsets, cutoff):
    out = set()
    for a, b in zip(offsets[:-1], offsets[1:]):
        d = np.linalg.norm(R[a:b, None] - R[None, a:b], axis=-1)
        i, j = np.nonzero((d < cutoff) & ~np.eye(b - a, dtype=bool))
        out |= {(int(x + a), int(y + a)) for x, y in zip(i, j)}
    return out


@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    cutoff=st.floats(0.5, 6.0),
    spread=st.floats(0.5, 8.0),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=80, deadline=None)
def test_neighbour_list_equals_brute_force(sizes, cutoff, spread, seed):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    R = (rng.standard_normal((offsets[-1], 3)) * spread).astype(np.float32)
    dst, src = neighbour_pairs(R, offsets, cutoff)
    got = set(zip(dst.tolist(), src.tolist()))
    assert len(got) == dst.size  # no duplicates
    assert got == brute_pairs(R.astype(np.float64), offsets, cutoff) or _only_boundary_differs(R, got, offsets, cutoff)
    assert count_pairs(R, offsets, cutoff).sum() == dst.size


def _only_boundary_differs(R, got, offsets, cutoff):
    ref = brute_pairs(R.astype(np.float64), offsets, cutoff)
    for i, j in got ^ ref:  # float32 vs float64 rounding right at the cutoff
        if abs(np.linalg.norm(R[i].astype(np.float64) - R[j]) - cutoff) > 1e-5:
            return False
    return True


def test_large_molecule_uses_spatial_method_and_agrees():
    rng = np.random.default_rng(0)
    n = ALL_PAIRS_MAX_ATOMS + 200
    R = rng.uniform(0, 25, size=(n + 10, 3))
    offsets = np.array([0, 10, n + 10])
    dst, src = neighbour_pairs(R, offsets, 3.0)
    assert set(zip(dst.tolist(), src.tolist())) == brute_pairs(R, offsets, 3.0)


def test_too_few_slots_is_an_error():
    R = np.zeros((4, 3))
    with pytest.raises(ValueError, match="more pairs"):
        neighbour_pairs(R, np.array([0, 4]), 1.0, np.zeros(5, np.int32), np.zeros(5, np.int32))


def _dataset(path, n=300, seed=0, esp=False, lo=1, hi=25):
    rng = np.random.default_rng(seed)
    with PackedWriter(path) as w:
        for i in range(n):
            k = int(rng.integers(lo, hi))
            s = Structure(Z=rng.integers(1, 9, k), R=rng.standard_normal((k, 3)) * 2, E=float(i), F=rng.standard_normal((k, 3)),
                          Qtot=float(i % 3 - 1), index=i)
            if esp:
                g = int(rng.integers(5, 40))
                s.grid, s.esp = rng.standard_normal((g, 3)) * 4, rng.standard_normal(g)
            w.add(s.checked("m"))
    return PackedDataset(path)


def test_every_structure_once_per_epoch_reproducible(tmp_path):
    ds = _dataset(tmp_path / "ds")
    subset = np.arange(0, 300, 2)
    loader = BatchLoader(ds, subset, batch_size=16, cutoff=4.0, seed=5)
    seen = []
    shapes = set()
    for batch in loader.epoch(0):
        seen += batch["index"][batch["graph_mask"]].tolist()
        shapes.add(batch["Z"].shape + batch["dst"].shape + batch["E"].shape)
    assert sorted(seen) == subset.tolist()
    assert len(shapes) <= 4 and len(loader.budgets) <= 4
    again = [b["index"].tolist() for b in BatchLoader(ds, subset, batch_size=16, cutoff=4.0, seed=5).epoch(0)]
    first = [b["index"].tolist() for b in loader.epoch(0)]
    assert again == first
    assert [b["index"].tolist() for b in loader.epoch(1)] != first


def test_padding_never_leaks_into_real_entries(tmp_path):
    ds = _dataset(tmp_path / "ds")
    loader = BatchLoader(ds, batch_size=8, cutoff=3.0, prefetch=0)
    for batch in loader.epoch(0):
        am, gm, pm = batch["atom_mask"], batch["graph_mask"], batch["pair_mask"]
        pad_atom, pad_graph = am.size - 1, gm.size - 1
        assert not am[-1] and not gm[-1]  # the spare slots are always padding
        assert np.all(batch["atom_graph"][~am] == pad_graph)
        assert np.all(batch["dst"][~pm] == pad_atom) and np.all(batch["src"][~pm] == pad_atom)
        assert np.all(am[batch["dst"][pm]]) and np.all(am[batch["src"][pm]])
        assert np.all(batch["atom_graph"][batch["dst"][pm]] == batch["atom_graph"][batch["src"][pm]])
        assert np.all(batch["Z"][~am] == 0) and np.all(batch["R"][~am] == 0) and np.all(batch["F"][~am] == 0)
        assert np.all(batch["E"][~gm] == 0) and np.all(batch["n_atoms"][~gm] == 0)
        # real entries are the dataset's rows, molecule by molecule
        starts = np.concatenate([[0], np.cumsum(batch["n_atoms"][gm])])
        for k, mol in enumerate(batch["index"][gm]):
            row = ds[int(mol)]
            sl = slice(starts[k], starts[k + 1])
            np.testing.assert_array_equal(batch["Z"][sl], row["Z"])
            np.testing.assert_array_equal(batch["R"][sl], row["R"])
            assert np.all(batch["atom_graph"][sl] == k)
            assert batch["E"][k] == row["E"] and batch["Qtot"][k] == row["Qtot"]
        # and the pairs are exactly the neighbour list of those atoms
        n_real = int(am.sum())
        ref = brute_pairs(batch["R"][:n_real].astype(np.float64), starts, 3.0)
        got = set(zip(batch["dst"][pm].tolist(), batch["src"][pm].tolist()))
        assert got == ref or _only_boundary_differs(batch["R"], got, starts, 3.0)


def test_given_budgets_and_a_molecule_too_big(tmp_path):
    ds = _dataset(tmp_path / "ds", n=20, lo=5, hi=6)
    loader = BatchLoader(ds, batch_size=4, cutoff=None, budgets=[Budget(5, 21, 0)])
    assert all(b["Z"].shape == (21,) for b in loader.epoch(0))
    assert len(loader) == 5
    from mmlwf.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        BatchLoader(ds, batch_size=4, cutoff=None, budgets=[Budget(5, 5, 0)]).plan(0)


def test_mixture_weights_and_dataset_tags(tmp_path):
    a = _dataset(tmp_path / "a", n=100, seed=1)
    b = _dataset(tmp_path / "b", n=60, seed=2)
    loader = BatchLoader([a, b], batch_size=10, cutoff=2.0, weights=[1.0, 0.5], names=["a", "b"], seed=0)
    seen = {0: [], 1: []}
    for batch in loader.epoch(3):
        seen[int(batch["dataset"])] += batch["index"][batch["graph_mask"]].tolist()
    assert sorted(seen[0]) == list(range(100))
    assert len(seen[1]) == 30 and len(set(seen[1])) == 30
    loader2 = BatchLoader([a, b], batch_size=10, cutoff=2.0, weights=[0, 2], seed=0)
    counts = np.bincount(np.concatenate([bt["index"][bt["graph_mask"]] for bt in loader2.epoch(0)]))
    assert np.all(counts == 2) and counts.size == 60


def test_esp_grid_points_carried(tmp_path):
    ds = _dataset(tmp_path / "ds", n=50, esp=True)
    loader = BatchLoader(ds, batch_size=8, cutoff=3.0)
    total = 0
    for batch in loader.epoch(0):
        gm = batch["grid_mask"]
        assert batch["grid"].shape[0] == gm.size == batch["esp"].shape[0]
        assert np.all(batch["grid_graph"][~gm] == batch["graph_mask"].size - 1)
        for k, mol in enumerate(batch["index"][batch["graph_mask"]]):
            row = ds[int(mol)]
            sel = (batch["grid_graph"] == k) & gm
            np.testing.assert_array_equal(batch["esp"][sel], row["esp"])
            np.testing.assert_array_equal(batch["grid"][sel], row["grid"])
            total += 1
    assert total == 50


def test_device_transfer_and_errors_reach_the_consumer(tmp_path):
    import jax

    ds = _dataset(tmp_path / "ds", n=30)
    loader = BatchLoader(ds, batch_size=8, cutoff=3.0)
    batch = next(iter(loader.epoch(0, device=True)))
    assert isinstance(batch["R"], jax.Array)
    real = loader.assemble

    def failing(k, positions, shape_id):
        if failing.calls == 1:
            raise RuntimeError("disk gone")
        failing.calls += 1
        return real(k, positions, shape_id)

    failing.calls = 0
    loader.assemble = failing
    with pytest.raises(RuntimeError, match="disk gone"):
        for _ in loader.epoch(0):
            pass
    with pytest.raises(IndexError, match="out of range"):
        BatchLoader(ds, np.array([0, 30]), batch_size=8)


def test_cli_bench_loader_json(tmp_path, capsys):
    import json

    from mmlwf.cli import main

    _dataset(tmp_path / "ds", n=200)
    assert main(["bench", "loader", str(tmp_path / "ds"), "--cutoff", "3", "--batch-size", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("atoms_per_s", "molecules_per_s", "pairs_per_s", "padding_efficiency_atoms",
                "padding_efficiency_pairs", "n_shapes", "peak_anon_mb"):
        assert key in result
    assert result["molecules_per_epoch"] == 200 and 1 <= result["n_shapes"] <= 4
    assert 0.5 < result["padding_efficiency_atoms"] <= 1 and result["peak_anon_mb"] > 0
