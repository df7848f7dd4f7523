"""PhysNet physics checks: finite-difference forces, invariances, padding independence,
charge conservation, isolated atoms, finite gradients, and the configuration round trip."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlwf.batching import BatchLoader, Budget
from mmlwf.models.physnet import long_pair_cutoff
from mmlwf.models import (
    PhysNet,
    build_model,
    energy_and_forces,
    init_params,
    model_config,
    pair_cutoff,
)
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure

from .precision import FLOAT64_RTOL, float32_atol, to_float64

CUTOFF = 5.0
# one float32 model (equivariant, every physics term on) and one batch shape shared by most
# tests, so that XLA compiles few times
CONFIG = {"features": 16, "max_degree": 1, "num_iterations": 2, "num_basis_functions": 8, "cutoff": CUTOFF,
          "num_residual": 1, "charges": True, "coulomb": True, "repulsion": True, "coulomb_cutoff": 10.0}
SHAPE = Budget(8, 40, 400)

WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]))
_T = 0.629  # tetrahedral positions at 1.09 Å
METHANE = (np.array([6, 1, 1, 1, 1]), np.array([[0, 0, 0], [_T, _T, _T], [-_T, -_T, _T], [-_T, _T, -_T], [_T, -_T, -_T]]))
AMMONIUM = (np.array([7, 1, 1, 1, 1]), METHANE[1] * 0.94)
HYDROXIDE = (np.array([8, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]]))


def molecule(kind, rng, qtot=0.0, noise=0.06, index=0):
    Z, R = kind
    return Structure(Z=Z.copy(), R=np.asarray(R, float) + noise * rng.standard_normal(R.shape), E=0.0, Qtot=qtot, index=index)


def write(path, structures) -> PackedDataset:
    with PackedWriter(path) as w:
        for i, s in enumerate(structures):
            s.index = i
            w.add(s.checked("test"))
    return PackedDataset(path)


def one_batch(ds, budget=SHAPE, indices=None, cutoff=CUTOFF) -> dict:
    loader = BatchLoader(ds, None if indices is None else np.asarray(indices), budgets=[budget], cutoff=cutoff,
                         shuffle=False, prefetch=0)
    batches = list(loader.epoch(0))
    assert len(batches) == 1, "test molecules must fit one batch"
    return batches[0]


def molecule_rows(batch, index):
    """Graph number and atom rows of dataset molecule ``index`` in ``batch``."""
    g = int(np.flatnonzero(batch["index"] == index)[0])
    atoms = np.flatnonzero((batch["atom_graph"] == g) & batch["atom_mask"])
    return g, atoms


def random_params(model, batch, seed=0, dtype=np.float64):
    """Random params of the right shapes without compiling ``model.init`` (saves seconds per
    model): kernels ~ N(0, 1/fan_in), gates and scales ~ 1 + N(0, 0.1), other vectors ~ N(0, 0.3)."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), batch))
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = jax.tree_util.keystr(path)
        if len(leaf.shape) >= 2:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[-2])
        elif "gate" in name or "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = 0.3 * rng.standard_normal(leaf.shape)
        return jnp.asarray(value.astype(dtype))

    return jax.tree_util.tree_map_with_path(make, shapes)


def rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Datasets for the float32 tests, all batched into SHAPE."""
    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("physnet")
    mixed = [molecule(WATER, rng), molecule(METHANE, rng), molecule(AMMONIUM, rng, qtot=1.0),
             molecule(HYDROXIDE, rng, qtot=-1.0), molecule(WATER, rng), molecule(METHANE, rng),
             molecule(AMMONIUM, rng, qtot=1.0)]
    return {"mixed": write(tmp / "mixed", mixed), "rng": rng, "tmp": tmp}


@pytest.fixture(scope="module")
def model32(data):
    model = build_model(CONFIG)
    batch = one_batch(data["mixed"], indices=[0, 1, 2, 3])
    params = random_params(model, batch, seed=1, dtype=np.float32)
    forward = jax.jit(lambda p, b: energy_and_forces(model, p, b))
    return model, params, forward


def inputs(batch):
    keys = ("Z", "R", "dst", "src", "atom_graph", "atom_mask", "pair_mask", "graph_mask", "Qtot")
    return {k: batch[k] for k in keys}


# -- forces


@pytest.mark.parametrize("max_degree", [0, 1])
def test_forces_match_central_finite_differences_float64(tmp_path, x64, max_degree):
    rng = np.random.default_rng(max_degree)
    ds = write(tmp_path / "ds", [molecule(WATER, rng, noise=0.1), molecule(AMMONIUM, rng, qtot=1.0, noise=0.1),
                                 molecule(HYDROXIDE, rng, qtot=-1.0)])
    batch = one_batch(ds, Budget(4, 16, 64))
    batch = {k: (v.astype(np.float64) if k in ("R", "Qtot") else v) for k, v in inputs(batch).items()}
    model = build_model({**CONFIG, "max_degree": max_degree})
    params = random_params(model, batch, seed=2)
    forward = jax.jit(lambda R: energy_and_forces(model, params, {**batch, "R": R}))
    R0 = jnp.asarray(batch["R"])
    out = forward(R0)
    assert out["forces"].dtype == jnp.float64
    F = np.asarray(out["forces"])
    real = np.flatnonzero(batch["atom_mask"])
    np.testing.assert_array_equal(F[~batch["atom_mask"]], 0.0)
    assert np.abs(F[real]).max() > 0.1  # the test is not vacuous

    h = 1e-5
    fd = np.zeros_like(F)
    for i in real:
        for c in range(3):
            plus = float(jnp.sum(forward(R0.at[i, c].add(h))["energy"]))
            minus = float(jnp.sum(forward(R0.at[i, c].add(-h))["energy"]))
            fd[i, c] = -(plus - minus) / (2 * h)
    scale = np.abs(F[real]).max()
    np.testing.assert_allclose(F[real], fd[real], rtol=0, atol=1e-6 * scale)


# -- invariances


def test_invariant_energy_covariant_forces_and_dipole(tmp_path, model32):
    _, params, forward = model32
    rng = np.random.default_rng(7)
    base = molecule(AMMONIUM, rng, qtot=1.0, noise=0.1)  # charged: the dipole depends on the origin
    Q = rotation(rng)
    shift = np.array([3.0, -7.5, 11.0])
    perm = rng.permutation(base.n_atoms)
    variants = [
        base,
        Structure(Z=base.Z, R=base.R @ Q.T, E=0.0, Qtot=1.0),
        Structure(Z=base.Z, R=base.R + shift, E=0.0, Qtot=1.0),
        Structure(Z=base.Z[perm], R=base.R[perm], E=0.0, Qtot=1.0),
        Structure(Z=base.Z[perm], R=(base.R[perm] + shift) @ Q.T, E=0.0, Qtot=1.0),
    ]
    batch = one_batch(write(tmp_path / "ds", variants))
    out = jax.tree.map(np.asarray, forward(params, batch))
    rows = [molecule_rows(batch, k) for k in range(len(variants))]
    E = [out["energy"][g] for g, _ in rows]
    F = [out["forces"][a] for _, a in rows]
    q = [out["charges"][a] for _, a in rows]
    D = [out["dipole"][g] for g, _ in rows]
    assert np.abs(F[0]).max() > 0.1 and np.abs(D[0]).max() > 1e-3
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(E[1:], [E[0]] * 4, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(F[1], F[0] @ Q.T, **tol)
    np.testing.assert_allclose(F[2], F[0], **tol)
    np.testing.assert_allclose(F[3], F[0][perm], **tol)
    np.testing.assert_allclose(F[4], F[0][perm] @ Q.T, **tol)
    np.testing.assert_allclose(q[3], q[0][perm], **tol)
    np.testing.assert_allclose(D[1], D[0] @ Q.T, **tol)
    np.testing.assert_allclose(D[2], D[0], **tol)
    np.testing.assert_allclose(D[4], D[0] @ Q.T, **tol)


# -- padding


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_molecule_same_prediction_whatever_padding_and_neighbours(data, model32, dtype, request):
    """Exact in float64 (to summation order); in float32 to float32 rounding of each quantity."""
    _, params, forward = model32
    if dtype == "float64":
        request.getfixturevalue("x64")
        params = to_float64(params)
    ds = data["mixed"]
    target = 2  # the ammonium cation
    cases = [
        one_batch(ds, Budget(4, 20, 120), indices=[1, 2]),
        one_batch(ds, SHAPE, indices=[1, 2]),
        one_batch(ds, SHAPE, indices=[0, 2, 3, 4, 5]),
        one_batch(ds, SHAPE, indices=[2, 6]),
    ]
    results = []
    for batch in cases:
        batch = to_float64(batch) if dtype == "float64" else batch
        out = jax.tree.map(np.asarray, forward(params, batch))
        assert out["energy"].dtype == np.dtype(dtype)
        g, atoms = molecule_rows(batch, target)
        pad_atoms = ~batch["atom_mask"]
        pad_graphs = ~batch["graph_mask"]
        assert np.all(out["forces"][pad_atoms] == 0) and np.all(out["charges"][pad_atoms] == 0)
        assert np.all(out["atomic_energies"][pad_atoms] == 0)
        assert np.all(out["energy"][pad_graphs] == 0) and np.all(out["dipole"][pad_graphs] == 0)
        results.append((out["energy"][g], out["forces"][atoms], out["charges"][atoms], out["dipole"][g],
                        out["atomic_energies"][atoms]))
    assert len({b["R"].shape for b in cases}) == 2
    ref = results[0]
    assert np.abs(ref[1]).max() > 0.1
    for got in results:
        tol = {"rtol": FLOAT64_RTOL, "atol": 1e-13} if dtype == "float64" else None
        np.testing.assert_allclose(got[4].sum(), got[0], **(tol or {"rtol": 0, "atol": float32_atol(got[4])}))
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, **(tol or {"rtol": 0, "atol": float32_atol(a, b)}))


def test_padding_pairs_with_garbage_geometry_change_nothing(data, model32):
    """Padding pairs and atoms are masked, whatever values they hold."""
    _, params, forward = model32
    batch = one_batch(data["mixed"], indices=[0, 1, 2])
    ref = jax.tree.map(np.asarray, forward(params, batch))
    messy = dict(batch)
    pad_atoms = np.flatnonzero(~batch["atom_mask"])
    pad_pairs = np.flatnonzero(~batch["pair_mask"])
    messy["R"] = batch["R"].copy()
    messy["R"][pad_atoms] = 0.3  # padding atoms right on top of a real atom's neighbourhood
    messy["R"][pad_atoms[0]] = batch["R"][0]  # one exactly on a real atom
    messy["Z"] = batch["Z"].copy()
    messy["Z"][pad_atoms] = 6
    messy["dst"], messy["src"] = batch["dst"].copy(), batch["src"].copy()
    messy["src"][pad_pairs[: len(pad_pairs) // 2]] = 0  # masked pairs touching a real atom
    messy["dst"][pad_pairs[len(pad_pairs) // 2:]] = 1
    messy["Qtot"] = batch["Qtot"].copy()
    messy["Qtot"][~batch["graph_mask"]] = 3.0
    got = jax.tree.map(np.asarray, forward(params, messy))
    real = batch["atom_mask"]
    np.testing.assert_allclose(got["energy"], ref["energy"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got["forces"][real], ref["forces"][real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["charges"], ref["charges"], rtol=1e-5, atol=1e-6)
    assert np.all(got["forces"][~real] == 0)


# -- charges


@given(qtot=st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=SHAPE.n_graphs, max_size=SHAPE.n_graphs),
       seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_charges_sum_to_total_charge(data, model32, qtot, seed):
    _, params, forward = model32
    batch = one_batch(data["mixed"], indices=[0, 2, 3, 4, 5])
    batch = dict(batch)
    rng = np.random.default_rng(seed)
    batch["R"] = (batch["R"] + 0.05 * rng.standard_normal(batch["R"].shape)).astype(np.float32)
    batch["Qtot"] = np.asarray(qtot, np.float64)  # the padding graph gets a value too: ignored
    out = jax.tree.map(np.asarray, forward(params, batch))
    real_graphs = np.flatnonzero(batch["graph_mask"])
    sums = np.zeros(SHAPE.n_graphs)
    np.add.at(sums, batch["atom_graph"][batch["atom_mask"]], out["charges"][batch["atom_mask"]])
    np.testing.assert_allclose(sums[real_graphs], batch["Qtot"][real_graphs], atol=2e-5)
    assert np.all(out["charges"][~batch["atom_mask"]] == 0)
    assert np.all(np.isfinite(out["forces"])) and np.all(np.isfinite(out["dipole"]))


# -- degenerate inputs and gradients


def _loss_grad(model):
    def loss(params, batch):
        out = energy_and_forces(model, params, batch)
        m = batch["atom_mask"][:, None]
        return jnp.sum(out["energy"] ** 2) + jnp.sum(jnp.where(m, out["forces"] ** 2, 0.0)) + jnp.sum(out["dipole"] ** 2)

    return jax.jit(jax.grad(loss))


@pytest.fixture(scope="module")
def loss_grad(model32):
    return _loss_grad(model32[0])


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def test_isolated_atom_and_far_apart_atoms_are_finite(tmp_path, model32, loss_grad):
    _, params, forward = model32
    far = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])  # every pair beyond the cutoff
    structures = [
        Structure(Z=np.array([8]), R=np.zeros((1, 3)), E=0.0, Qtot=-1.0),  # isolated, charged
        Structure(Z=np.array([6]), R=np.zeros((1, 3)), E=0.0, Qtot=0.0),
        Structure(Z=np.array([6, 6, 6]), R=far, E=0.0, Qtot=0.0),
        Structure(Z=np.array([6, 6, 6]), R=far + 20.0, E=0.0, Qtot=0.0),  # gets pairs beyond the cutoff below
        molecule(WATER, np.random.default_rng(3)),
    ]
    batch = one_batch(write(tmp_path / "ds", structures))
    # pairs beyond the model cutoff (as a loader with a longer cutoff would give) for molecule 3
    _, atoms = molecule_rows(batch, 3)
    n = int(batch["pair_mask"].sum())
    extra = [(i, j) for i in atoms for j in atoms if i != j]
    batch = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in batch.items()}
    for k, (i, j) in enumerate(extra):
        batch["dst"][n + k], batch["src"][n + k], batch["pair_mask"][n + k] = i, j, True

    out = jax.tree.map(np.asarray, forward(params, batch))
    assert _all_finite(out)
    assert _all_finite(loss_grad(params, batch))
    _, a_o = molecule_rows(batch, 0)
    np.testing.assert_allclose(out["charges"][a_o], [-1.0], atol=1e-6)
    np.testing.assert_array_equal(out["forces"][a_o], 0.0)  # nothing to push a lone atom
    # atoms beyond the cutoff do not interact (neutral, identical atoms carry no charge)
    g_c, _ = molecule_rows(batch, 1)
    g_far, a_far = molecule_rows(batch, 2)
    np.testing.assert_allclose(out["energy"][g_far], 3 * out["energy"][g_c], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["forces"][a_far], 0.0, atol=1e-6)
    g_far2, _ = molecule_rows(batch, 3)
    np.testing.assert_allclose(out["energy"][g_far2], out["energy"][g_far], rtol=1e-5, atol=1e-5)


def test_energy_continuous_where_a_pair_leaves_the_neighbour_list(tmp_path, model32):
    _, params, forward = model32
    eps = 1e-4
    pair = lambda d: Structure(Z=np.array([8, 8]), R=np.array([[0.0, 0, 0], [d, 0, 0]]), E=0.0)
    batch = one_batch(write(tmp_path / "ds", [pair(CUTOFF - eps), pair(CUTOFF + eps), pair(CUTOFF - 1.0)]))
    assert batch["pair_mask"].sum() == 4  # the pair inside the cutoff, both directions, and the closer one
    out = jax.tree.map(np.asarray, forward(params, batch))
    E = [out["energy"][molecule_rows(batch, k)[0]] for k in range(3)]
    assert abs(E[2] - E[1]) > 1e-3  # the interaction is not negligible inside the cutoff
    assert abs(E[0] - E[1]) < 1e-5


def test_parameter_gradients_finite_for_padded_batch(data, model32, loss_grad):
    params = model32[1]
    batch = one_batch(data["mixed"], indices=[0, 1, 2, 3])
    assert (~batch["atom_mask"]).sum() > 0 and (~batch["pair_mask"]).sum() > 0 and (~batch["graph_mask"]).sum() > 0
    grads = loss_grad(params, batch)
    assert _all_finite(grads)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert sum(n > 0 for n in norms) > 0.9 * len(norms)  # gradients reach (almost) every parameter


# -- configuration


def test_config_round_trip_and_errors():
    model = build_model({"type": "physnet", "features": 32, "max_degree": 2, "charges": True, "coulomb": True,
                         "cutoff": 4.5, "num_iterations": 2})
    cfg = json.loads(json.dumps(model_config(model)))
    assert build_model(cfg) == model
    assert cfg["features"] == 32 and cfg["max_degree"] == 2 and cfg["coulomb"] is True
    assert pair_cutoff(model) == 4.5 and pair_cutoff(build_model({"cutoff": 4.5})) == 4.5  # message passing only
    assert long_pair_cutoff(model) == math.inf and long_pair_cutoff(build_model({"cutoff": 4.5})) is None
    assert long_pair_cutoff(build_model({"charges": True, "coulomb": True, "coulomb_cutoff": 9.0})) == 9.0
    assert isinstance(build_model({}), PhysNet)
    tiny = build_model({"features": 4, "num_iterations": 1, "num_basis_functions": 4, "num_residual": 0})
    batch = {"Z": np.array([8, 1, 0]), "R": np.eye(3, dtype=np.float32), "dst": np.array([0, 1, 2]),
             "src": np.array([1, 0, 2]), "atom_graph": np.array([0, 0, 1]), "atom_mask": np.array([True, True, False]),
             "pair_mask": np.array([True, True, False]), "graph_mask": np.array([True, False])}  # no Qtot: zeros
    variables = init_params(tiny, jax.random.PRNGKey(0), batch)
    out = jax.jit(lambda p, b: energy_and_forces(tiny, p, b))(variables["params"], batch)  # bare params work too
    assert out["energy"].shape == (2,) and out["forces"].shape == (3, 3) and "charges" not in out
    assert _all_finite(out) and float(out["energy"][1]) == 0.0
    with pytest.raises(ValueError, match="feeatures"):
        build_model({"feeatures": 3})
    with pytest.raises(ValueError, match="charges"):
        build_model({"charges": False, "coulomb": True})
    with pytest.raises(ValueError, match="features"):
        build_model({"features": 2.5})
    with pytest.raises(ValueError, match="dcmnet"):
        build_model({"type": "dcmnet"})
