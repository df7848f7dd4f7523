"""The long-range pair list (``GraphBatch.long_pairs``): what a model kind asks for with
``long_pair_cutoff``, every assembler fills (loader, make_loaders, prediction, calculator, MD,
compat, from_molecules), the model receives (``long_dst long_src long_pair_mask``), and a model
without one never sees. The model is the toy kind ``toy_pair_long``
(tests/toy_pair_long_model.py): a short-range pair model plus a damped ``-c/r^6`` term over
the long list, checked against a brute-force sum over every pair in float64."""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
import pytest

from mmlwf.batch import LONG_INPUTS, as_batch, device_fields, from_molecules, padding_like
from mmlwf.batching import BatchLoader, Budget, count_pairs, neighbour_pairs
from mmlwf.models import registry
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure

from .test_batch import assert_padding_convention

PLUGIN = "tests.toy_pair_long_model"
SHORT = 2.0  # the toy's message-passing cutoff (Å): most pairs of the molecules are beyond it
ELEMENTS = {"1": -1.0, "6": -2.0, "8": -3.0}


@pytest.fixture
def kinds(monkeypatch):
    """``(toy_pair_long, toy_pair)``, registered through the plugin variable."""
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    registry.load_plugins(force=True)
    yield registry.get("toy_pair_long"), registry.get("toy_pair")
    for name in ("toy_pair_long", "toy_pair"):
        registry.unregister(name)
    for module in (PLUGIN, "tests.toy_pair_model"):
        sys.modules.pop(module, None)


def _molecule(rng, n):
    """``n`` atoms along a bent chain, 1.2-1.6 Å apart (up to ~10 Å end to end), rotated."""
    steps = rng.normal(size=(n, 3)) * 0.2 + [1.4, 0.0, 0.0]
    R = np.cumsum(steps, axis=0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return {"Z": rng.choice([1, 6, 8], size=n), "R": R @ q.T}


@pytest.fixture(scope="module")
def molecules():
    rng = np.random.default_rng(3)
    return [_molecule(rng, n) for n in (3, 7, 1, 5, 8, 2, 6, 4, 7, 3)]


@pytest.fixture(scope="module")
def dataset(molecules, tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    with PackedWriter(root / "ds") as w:
        for i, m in enumerate(molecules):
            w.add(Structure(Z=m["Z"], R=m["R"], E=-float(i), F=np.zeros((len(m["Z"]), 3)), index=i).checked("t"))
    from mmlwf.split import split_dataset

    split_dataset(root / "ds", root / "split.npz", valid=2, test=2, seed=0)
    return PackedDataset(root / "ds"), root / "split.npz"


def _trained(kind, config, seed=0, dtype=np.float64):
    """A TrainedModel of ``kind`` with random parameters (the checks hold for any)."""
    from mmlwf.element_energies import reference_table
    from mmlwf.inference import TrainedModel
    from mmlwf.models.common import init_params

    model = kind.build_model(config)
    example = from_molecules([{"Z": np.array([6, 1]), "R": np.eye(2, 3)}], n_graphs=2, n_atoms=4, n_pairs=4,
                             long_cutoff=kind.long_pair_cutoff(model), dtype=dtype)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: np.asarray(0.5 * rng.standard_normal(s.shape), dtype), shapes)
    return TrainedModel(model, params, {"model": kind.model_config(model)}, reference_table(ELEMENTS), "toy")


def _brute_force(Z, R, c, long_cutoff=None):
    """Energy (eV) and forces of the toy's long-range term over every pair ``i < j``, float64."""
    from .toy_pair_long_model import DAMPING

    E, F = 0.0, np.zeros_like(R)
    for i in range(len(Z)):
        for j in range(i + 1, len(Z)):
            d = R[i] - R[j]
            r = float(np.sqrt(d @ d))
            s, ds = 1.0, 0.0  # switch and its derivative
            if long_cutoff is not None:
                if r >= long_cutoff:
                    continue
                s = 0.5 * (math.cos(math.pi * r / long_cutoff) + 1.0)
                ds = -0.5 * math.pi / long_cutoff * math.sin(math.pi * r / long_cutoff)
            cc = math.sqrt(c[Z[i]] * c[Z[j]])
            e = -cc / (r**6 + DAMPING**6)
            de = cc * 6 * r**5 / (r**6 + DAMPING**6) ** 2
            E += e * s
            g = (de * s + e * ds) * d / r  # dE/dR_i
            F[i] -= g
            F[j] += g
    return E, F


# -- neighbour lists and the batch


def test_every_pair_list_needs_no_positions_and_matches_a_finite_cutoff_beyond_the_molecule(molecules):
    R = np.concatenate([m["R"] for m in molecules])
    n = np.array([len(m["Z"]) for m in molecules])
    offsets = np.concatenate([[0], np.cumsum(n)])
    np.testing.assert_array_equal(count_pairs(np.full_like(R, np.nan), offsets, math.inf), n * (n - 1))
    everything = neighbour_pairs(np.full_like(R, np.nan), offsets, math.inf)
    far = neighbour_pairs(R, offsets, 1e6)  # the same pairs, in the same order
    np.testing.assert_array_equal(everything[0], far[0])
    np.testing.assert_array_equal(everything[1], far[1])
    assert len(everything[0]) == (n * (n - 1)).sum()
    with pytest.raises(ValueError, match="slots"):
        neighbour_pairs(R, offsets, math.inf, np.zeros(10, np.int32), np.zeros(10, np.int32))


def test_from_molecules_long_list_padding_dict_view_and_device_fields(molecules):
    mols = molecules[:3]
    b = from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=32, cutoff=SHORT, long_cutoff=math.inf, n_long_pairs=64)
    assert_padding_convention(b)
    lp = b.long_pairs
    assert lp.cutoff is None and b.pairs.cutoff == SHORT and len(lp.dst) == 64
    n_long = int(lp.mask.sum())
    assert n_long == 3 * 2 + 7 * 6 and lp.mask[:n_long].all() and not lp.mask[n_long:].any()
    assert np.all(lp.dst[n_long:] == 15) and np.all(lp.src[n_long:] == 15)  # padding pairs: the last atom
    graph = b.atom_graph
    assert np.all(graph[lp.dst[:n_long]] == graph[lp.src[:n_long]]) and np.all(lp.dst[:n_long] != lp.src[:n_long])
    assert int(b.pairs.mask.sum()) < n_long  # the short list stays short
    # within a finite long cutoff: the pairs within it, its cutoff recorded; default size: exactly those
    c = from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=32, cutoff=SHORT, long_cutoff=4.0)
    R = np.asarray(c.R, np.float64)
    d = np.linalg.norm(R[c.long_pairs.dst] - R[c.long_pairs.src], axis=1)
    assert c.long_pairs.cutoff == 4.0 and c.long_pairs.mask.all() and np.all(d < 4.0)
    assert len(d) == count_pairs(R[:10], np.array([0, 3, 10, 10]), 4.0).sum()
    with pytest.raises(ValueError, match="long-range pairs do not fit"):
        from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=32, cutoff=SHORT, long_cutoff=math.inf, n_long_pairs=40)
    # the dict view carries the list both ways; padding and the device batch keep its shapes
    d = dict(b)
    assert {"long_dst", "long_src", "long_pair_mask"} <= set(d) and b["long_dst"] is lp.dst
    back = as_batch(d)
    assert jax.tree.structure(back) == jax.tree.structure(b)
    pad = padding_like(b)
    assert not pad.long_pairs.mask.any() and np.all(pad.long_pairs.dst == 15) and pad.long_pairs.dst.shape == (64,)
    from mmlwf.batch import padding_pairs
    from mmlwf.training.parallel import shape_key

    # data-parallel groups only stack batches whose long lists agree too
    assert shape_key(b) != shape_key(b._replace(long_pairs=padding_pairs(32, 16)))
    dev = device_fields(c)
    assert dev.long_pairs.cutoff is None and dev.long_pairs.dst is c.long_pairs.dst
    # without a long cutoff: no list, and the batch reads as before
    plain = from_molecules(mols, n_graphs=4, n_atoms=16, n_pairs=32, cutoff=SHORT)
    assert plain.long_pairs is None and "long_dst" not in plain and "long_dst" not in dict(plain)


def test_compat_batches_take_the_long_list(dataset):
    from mmlwf.compat import PackedMemmapLoader, to_graph_batch

    ds, _ = dataset
    old = next(PackedMemmapLoader(ds, batch_size=3, shuffle=False).batches())
    assert to_graph_batch(old).long_pairs is None
    typed = to_graph_batch(old, long_cutoff=math.inf)
    assert_padding_convention(typed)
    pairs = {(int(i), int(j)) for i, j in zip(typed.pairs.dst, typed.pairs.src)}
    assert typed.long_pairs.mask.all() and {(int(i), int(j)) for i, j in zip(*typed.long_pairs[:2])} == pairs


# -- the loaders


def test_loader_long_pairs_have_the_right_count_and_their_own_budget(dataset):
    ds, _ = dataset
    n = np.asarray(ds.n_atoms)
    for long_cutoff in (math.inf, 4.0):
        loader = BatchLoader(ds, batch_size=3, cutoff=SHORT, long_cutoff=long_cutoff, shuffle=True, prefetch=0)
        assert all(b.n_long_pairs > 0 for b in loader.budgets)
        seen = []
        for batch in loader.epoch(0):
            assert_padding_convention(batch)
            mol = batch.index[batch.graph_mask]
            seen += mol.tolist()
            lp = batch.long_pairs
            offsets = np.concatenate([[0], np.cumsum(n[mol])])
            R = np.asarray(batch.R[: offsets[-1]], np.float64)
            expected = int(count_pairs(R, offsets, long_cutoff).sum())
            assert int(lp.mask.sum()) == expected and lp.mask[:expected].all()
            assert np.all(lp.dst[expected:] == batch.n_atom_slots - 1)
            assert lp.cutoff == (None if math.isinf(long_cutoff) else long_cutoff)
            assert len(lp.dst) == loader.budgets[int(batch.shape_id)].n_long_pairs
            if math.isinf(long_cutoff):
                assert expected == int((n[mol] * (n[mol] - 1)).sum())
        assert sorted(seen) == list(range(len(ds)))
    # the same batch as from_molecules assembles
    loader = BatchLoader(ds, cutoff=SHORT, long_cutoff=math.inf, budgets=[Budget(4, 24, 64, 0, 128)], shuffle=False,
                         prefetch=0)
    got = loader.assemble(0, np.arange(3), 0)
    mols = [{"Z": ds[i]["Z"], "R": ds[i]["R"]} for i in range(3)]
    ref = from_molecules(mols, n_graphs=4, n_atoms=24, n_pairs=64, cutoff=SHORT, long_cutoff=math.inf,
                         n_long_pairs=128)
    for name in ("dst", "src", "pair_mask", "long_dst", "long_src", "long_pair_mask"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    with pytest.raises(Exception, match="long_pairs"):  # a molecule too big for the long budget
        list(BatchLoader(ds, cutoff=SHORT, long_cutoff=math.inf, budgets=[Budget(4, 24, 64, 0, 8)], prefetch=0))


def test_make_loaders_takes_both_cutoffs_from_the_model_kind(kinds, dataset):
    from mmlwf.training import load_config
    from mmlwf.training.data import make_loaders

    ds, split = dataset
    cfg = load_config({"model": {"type": "toy_pair_long", "cutoff": SHORT}, "training": {"batch_size": 3}})
    train, valid = make_loaders(ds.path, split, cfg, prefetch=0)
    assert train.cutoff == SHORT and train.long_cutoff == math.inf and valid.long_cutoff == math.inf
    for batch in train.epoch(0):
        k = np.asarray(ds.n_atoms)[batch.index[batch.graph_mask]]
        assert int(batch.long_pairs.mask.sum()) == int((k * (k - 1)).sum())
    cfg = load_config({"model": {"type": "toy_pair_long", "cutoff": SHORT, "long_cutoff": 3.5}})
    assert make_loaders(ds.path, split, cfg, prefetch=0)[0].long_cutoff == 3.5


def test_a_model_without_long_pairs_gets_none_and_unchanged_shapes(kinds, dataset):
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.models.common import batch_inputs
    from mmlwf.training import load_config
    from mmlwf.training.data import TRAINING_SHAPES, make_loaders

    long_kind, kind = kinds
    ds, split = dataset
    assert kind.long_pair_cutoff(kind.build_model({})) is None
    assert registry.get("dcmnet").long_pair_cutoff(registry.get("dcmnet").build_model({})) is None
    cfg = load_config({"model": {"type": "toy_pair", "cutoff": SHORT}, "training": {"batch_size": 3}})
    train, _ = make_loaders(ds.path, split, cfg, prefetch=0)
    before = BatchLoader(ds, np.load(split)["train"], batch_size=3, cutoff=SHORT, n_shapes=TRAINING_SHAPES,
                         prefetch=0)  # the loader as it was
    assert train.long_cutoff is None and train.budgets == before.budgets
    assert all(b.n_long_pairs == 0 for b in train.budgets) and train.members[0].sizes.shape[1] == 4
    for got, ref in zip(train.epoch(0), before.epoch(0)):
        assert got.long_pairs is None
        assert jax.tree.map(np.shape, got) == jax.tree.map(np.shape, ref)
        assert not set(LONG_INPUTS) & set(batch_inputs(got))
    calc = MMLWFCalculator(_trained(kind, {"type": "toy_pair", "cutoff": SHORT}, dtype=np.float32))
    atoms = Atoms(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    assert calc.batch(atoms).long_pairs is None
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.shapes_compiled == {(8, 64)}


# -- the model sees the long list: energies and forces


@pytest.mark.parametrize("long_cutoff", [None, 4.0])
def test_calculator_long_range_equals_a_brute_force_sum_over_every_pair(kinds, x64, long_cutoff):
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator

    long_kind, kind = kinds
    trained = _trained(long_kind, {"type": "toy_pair_long", "cutoff": SHORT, "long_cutoff": long_cutoff})
    assert trained.long_pair_cutoff == (math.inf if long_cutoff is None else long_cutoff)
    short = _trained(kind, {"type": "toy_pair", "cutoff": SHORT})
    short.params = {"params": trained.params["params"]["short"]}
    m = _molecule(np.random.default_rng(7), 9)  # ~12 Å long: most pairs beyond the short cutoff
    atoms = Atoms(numbers=m["Z"], positions=m["R"])
    calc, calc_short = MMLWFCalculator(trained, dtype="float64"), MMLWFCalculator(short, dtype="float64")
    b = calc.batch(atoms)
    assert int(b.pairs.mask.sum()) < 20 and int(b.long_pairs.mask.sum()) == (72 if long_cutoff is None else
                                                                               count_pairs(m["R"], [0, 9], 4.0)[0])
    atoms.calc = calc
    E, F = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = calc_short
    E0, F0 = atoms.get_potential_energy(), atoms.get_forces()
    c = np.log1p(np.exp(np.asarray(trained.params["params"]["c"], np.float64)))  # softplus
    E_long, F_long = _brute_force(m["Z"], m["R"], c, long_cutoff)
    assert abs(E_long) > 1e-4 and E - E0 == pytest.approx(E_long, abs=1e-10)
    np.testing.assert_allclose(F - F0, F_long, rtol=0, atol=1e-10)
    # forces are -dE/dR of the calculator's energies (central differences)
    atoms.calc = calc
    h, R0 = 1e-5, atoms.positions.copy()
    for i, k in [(0, 0), (4, 1), (8, 2)]:
        shifted = []
        for sign in (1, -1):
            atoms.positions = R0 + sign * h * np.eye(9 * 3)[3 * i + k].reshape(9, 3)
            shifted.append(atoms.get_potential_energy())
        assert F[i, k] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), abs=1e-7)
    assert all(len(s) == 3 for s in calc.shapes_compiled)  # (atoms, pairs, long pairs)


def test_energies_are_invariant_to_padding_budgets_and_assembler(kinds, dataset, x64):
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.inference import jitted_forward

    long_kind, _ = kinds
    ds, _ = dataset
    trained = _trained(long_kind, {"type": "toy_pair_long", "cutoff": SHORT})
    step = jitted_forward(trained.model)
    energies = []
    for budgets in ([Budget(3, 16, 32, 0, 96)], [Budget(12, 64, 256, 0, 512), Budget(6, 32, 128, 0, 256)], None):
        loader = BatchLoader(ds, batch_size=4, cutoff=SHORT, long_cutoff=math.inf, budgets=budgets, shuffle=True,
                             seed=len(energies), prefetch=0)
        E = np.full(len(ds), np.nan)
        for batch in loader.epoch(0):
            batch = batch._replace(R=np.asarray(batch.R, np.float64))
            out = step(trained.params, device_fields(batch))
            real = batch.graph_mask
            E[batch.index[real]] = np.asarray(out["energy"])[real]
            # padding atoms get no force, and an all-padding batch no energy
            assert not np.asarray(out["forces"])[~batch.atom_mask].any()
            assert not np.asarray(step(trained.params, device_fields(padding_like(batch)))["energy"]).any()
        energies.append(E)
    np.testing.assert_allclose(energies[1], energies[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(energies[2], energies[0], rtol=0, atol=1e-12)
    calc = MMLWFCalculator(trained, dtype="float64")
    for i in (1, 4):
        atoms = Atoms(numbers=ds[i]["Z"], positions=np.asarray(ds[i]["R"], np.float64))
        atoms.calc = calc
        reference = trained.reference[ds[i]["Z"]].sum()
        assert atoms.get_potential_energy() - reference == pytest.approx(energies[0][i], abs=1e-10)


def test_prediction_and_md_fill_the_long_list(kinds, dataset, tmp_path):
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.md import MDSettings, run_md

    long_kind, _ = kinds
    ds, _ = dataset
    trained = _trained(long_kind, {"type": "toy_pair_long", "cutoff": SHORT}, dtype=np.float32)
    pred = trained.kind.predictions(trained, ds, np.arange(len(ds)), batch_size=3)
    calc = MMLWFCalculator(trained)
    for i in (1, 4, 8):
        atoms = Atoms(numbers=ds[i]["Z"], positions=ds[i]["R"])
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(pred["E_pred"][i], abs=1e-4)
        np.testing.assert_allclose(atoms.get_forces(), pred["F_pred"][pred["offsets"][i]:pred["offsets"][i + 1]],
                                   atol=1e-4)
    atoms = Atoms(numbers=ds[4]["Z"], positions=ds[4]["R"])
    summary = run_md(calc, atoms, MDSettings(steps=3, temperature_K=50.0), tmp_path / "md")
    assert summary["steps_done"] == 3 and all(len(s) == 3 for s in summary["padded_shapes"])


def test_a_long_range_kind_through_train_and_evaluate(kinds, dataset, tmp_path):
    import json

    from mmlwf.cli import main
    from mmlwf.rundir import RunDir
    from mmlwf.stats import compute_stats, write_stats

    ds, split = dataset
    write_stats(compute_stats(ds.path, split), tmp_path / "stats.json")
    run = tmp_path / "run"
    assert main(["train", "--data", str(ds.path), "--split", str(split), "--stats", str(tmp_path / "stats.json"),
                 "-o", str(run), "--set", "model.type=toy_pair_long", "--set", f"model.cutoff={SHORT}",
                 "--set", "training.batch_size=16", "--set", "training.max_epochs=1"]) == 0
    trained = RunDir(run).load()
    assert trained.kind.name == "toy_pair_long" and trained.long_pair_cutoff == math.inf
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--data", str(ds.path), "--split", str(split), "-o", str(metrics)]) == 0
    assert np.isfinite(json.loads(metrics.read_text())["metrics"]["forces_mae_eV_per_A"])
