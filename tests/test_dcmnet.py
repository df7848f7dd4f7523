"""DCMNet: analytic potential, charge conservation, equivariance, padding, training on ESP."""

import csv
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from mmlwf.batch import from_molecules
from mmlwf.errors import ConfigError
from mmlwf.models import dcmnet
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.structure import Structure

from .precision import FLOAT64_RTOL, float32_atol, to_float64

K_E = 14.399645  # eV Å / e²


def _water(rng):
    """A distorted water geometry (Å)."""
    r1, r2 = rng.uniform(0.9, 1.05, 2)
    th = np.deg2rad(rng.uniform(95, 115))
    R = np.array([[0, 0, 0], [r1, 0, 0], [r2 * np.cos(th), r2 * np.sin(th), 0]])
    return Rotation.random(random_state=rng).apply(R) + rng.normal(0, 1, 3)


def _batch(mols, n_graphs, n_atoms, n_pairs, n_grid):
    """A padded graph batch (:mod:`mmlwf.batch`) from ``[(Z, R, Qtot, grid)]``: all pairs
    within a molecule, padding atoms/pairs/points pointing at the last slot."""
    return from_molecules([{"Z": Z, "R": R, "Qtot": Q, "grid": grid} for Z, R, Q, grid in mols],
                          n_graphs=n_graphs, n_atoms=n_atoms, n_pairs=n_pairs, n_grid=n_grid)


def _shell_grid(R, rng, n=60):
    """Points 1.5-3 Å from the centroid direction, at least 1.2 Å from every atom."""
    pts = []
    while len(pts) < n:
        x = R.mean(0) + rng.normal(size=3) / 1.0 * rng.uniform(1.5, 3.5)
        if np.min(np.linalg.norm(R - x, axis=1)) > 1.2:
            pts.append(x)
    return np.array(pts)


@functools.cache
def _template():
    """Initialised variables of MODEL (their shapes do not depend on the batch shape)."""
    mols = [(np.array([8, 1]), np.array([[0.0, 0, 0], [1.0, 0, 0]]), 0.0, np.ones((2, 3)) * 3)]
    return dcmnet.init_params(MODEL, jax.random.PRNGKey(0), _batch(mols, 2, 3, 2, 3))


def _redraw(variables, seed):
    rng = np.random.default_rng(seed)  # numpy: nothing to compile
    return jax.tree.map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype), variables)


def _random_params(model, batch, seed):
    """MODEL's variables with every leaf redrawn at random (so charges and displacements are
    far from their zero initial values)."""
    assert model is MODEL
    return _redraw(_template(), seed)


SHAPE = (3, 8, 20, 48)  # graphs, atoms, pairs, grid points: one compilation for most tests


MODEL = dcmnet.DCMNet(n_dcm=3, features=8, num_iterations=2, num_basis_functions=8, cutoff=4.0)
APPLY = jax.jit(lambda v, b: dcmnet.forward(MODEL, v, b))


def test_esp_of_known_charges_matches_coulomb():
    rng = np.random.default_rng(0)
    # two molecules' charges and points, plus padding; no term crosses molecules
    pos = rng.normal(size=(7, 3))
    q = rng.normal(size=7)
    graph = np.array([0, 0, 0, 1, 1, 1, 2])
    cmask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    grid = rng.normal(size=(9, 3)) * 4 + 5
    ggraph = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    gmask = np.array([1] * 8 + [0], bool)
    V = np.asarray(dcmnet.esp_at_points(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(graph), jnp.asarray(cmask),
                                        jnp.asarray(grid), jnp.asarray(ggraph), jnp.asarray(gmask)))
    ref = np.zeros(9)
    for g in range(8):
        own = (graph == ggraph[g]) & cmask
        ref[g] = K_E * np.sum(q[own] / np.linalg.norm(grid[g] - pos[own], axis=1))
    np.testing.assert_allclose(V, ref, rtol=1e-5, atol=1e-6)
    assert V[8] == 0.0
    # a single unit charge: V = 14.399645 V at 1 Å, in volts
    one = dcmnet.esp_at_points(jnp.ones(1), jnp.zeros((1, 3)), jnp.zeros(1, int), jnp.ones(1, bool),
                               jnp.array([[0.0, 0.0, 1.0]]), jnp.zeros(1, int), jnp.ones(1, bool))
    assert float(one[0]) == pytest.approx(K_E, rel=1e-6)
    # a charge sitting on a grid point: finite value and gradient
    grad = jax.grad(lambda p: dcmnet.esp_at_points(jnp.ones(1), p, jnp.zeros(1, int), jnp.ones(1, bool),
                                                   jnp.zeros((1, 3)), jnp.zeros(1, int), jnp.ones(1, bool))[0])
    assert np.all(np.isfinite(np.asarray(grad(jnp.zeros((1, 3))))))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n1=st.integers(1, 4), n2=st.integers(1, 3),
       q1=st.floats(-2, 2), q2=st.floats(-2, 2))
def test_charges_sum_to_total_charge(seed, n1, n2, q1, q2):
    rng = np.random.default_rng(seed)
    mols = [(rng.integers(1, 10, n), rng.normal(size=(n, 3)) * 1.2, q, rng.normal(size=(5, 3)) * 3)
            for n, q in ((n1, q1), (n2, q2))]
    batch = _batch(mols, *SHAPE)
    out = APPLY(_random_params(MODEL, batch, seed % 1000), batch)
    q = np.asarray(out["dcm_charges"], np.float64)
    for k, (Z, _, Q, _) in enumerate(mols):
        own = batch["atom_graph"] == k
        own &= batch["atom_mask"]
        assert q[own].sum() == pytest.approx(Q, abs=2e-5)
        assert np.asarray(out["charges"])[own] == pytest.approx(q[own].sum(axis=1), abs=1e-5)
    assert np.all(q[~batch["atom_mask"]] == 0)
    # displacements are bounded by max_displacement
    d = np.asarray(out["dcm_positions"])[batch["atom_mask"]] - batch["R"][batch["atom_mask"]][:, None]
    assert np.all(np.linalg.norm(d, axis=-1) <= MODEL.max_displacement + 1e-5)


def _two_waters(seed=1):
    rng = np.random.default_rng(seed)
    mols = []
    for Q in (0.0, 1.0):
        R = _water(rng)
        mols.append((np.array([8, 1, 1]), R, Q, _shell_grid(R, rng, 20)))
    return mols


def test_charge_positions_rotate_and_esp_is_invariant():
    mols = _two_waters()
    batch = _batch(mols, *SHAPE)
    params = _random_params(MODEL, batch, 3)
    out = APPLY(params, batch)
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0])
    shift = np.array([1.5, -2.0, 0.7])
    moved = dict(batch)
    moved["R"] = (rot.apply(batch["R"]) + shift).astype(np.float32)
    moved["grid"] = (rot.apply(batch["grid"]) + shift).astype(np.float32)
    out2 = APPLY(params, moved)
    am, gm = batch["atom_mask"], batch["grid_mask"]
    pos, pos2 = np.asarray(out["dcm_positions"])[am], np.asarray(out2["dcm_positions"])[am]
    np.testing.assert_allclose(pos2, rot.apply(pos.reshape(-1, 3)).reshape(pos.shape) + shift, atol=2e-4)
    np.testing.assert_allclose(out2["dcm_charges"], out["dcm_charges"], atol=2e-5)
    np.testing.assert_allclose(np.asarray(out2["esp"])[gm], np.asarray(out["esp"])[gm], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out2["dipole"])[:2], rot.apply(np.asarray(out["dipole"])[:2]), atol=2e-4)
    # the displacements are not all zero (otherwise the equivariance check would be empty)
    assert np.abs(pos - batch["R"][am][:, None]).max() > 0.05


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_padding_and_batch_company_do_not_change_predictions(dtype, request):
    """Exact in float64 (to summation order); in float32 to float32 rounding of each quantity."""
    mols = _two_waters(5)
    small = _batch(mols[:1], *SHAPE)
    big = _batch(mols[::-1] + mols[:1], 5, 13, 40, 90)  # more padding, other molecules first
    params = _random_params(MODEL, big, 7)
    if dtype == "float64":
        request.getfixturevalue("x64")
        small, big, params = to_float64(small), to_float64(big), to_float64(params)
    a, b = jax.tree.map(np.asarray, APPLY(params, small)), jax.tree.map(np.asarray, APPLY(params, big))
    assert a["esp"].dtype == np.dtype(dtype)
    sa, sb = small["atom_mask"], (big["atom_graph"] == 2) & big["atom_mask"]
    ga, gb = small["grid_mask"], (big["grid_graph"] == 2) & big["grid_mask"]
    pairs = [(a["dcm_positions"][sa], b["dcm_positions"][sb]), (a["dcm_charges"][sa], b["dcm_charges"][sb]),
             (a["esp"][ga], b["esp"][gb]), (a["dipole"][0], b["dipole"][2])]
    for x, y in pairs:
        if dtype == "float64":
            np.testing.assert_allclose(x, y, rtol=FLOAT64_RTOL, atol=1e-13)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=float32_atol(x, y))
    # garbage in padding slots changes nothing: same shapes, masked values, the same sums
    dirty = {k: np.array(v) for k, v in big.items()}
    dirty["R"][~big["atom_mask"]] = 1e3
    dirty["Z"][~big["atom_mask"]] = 6
    dirty["grid"][~big["grid_mask"]] = 0.0
    c = APPLY(params, dirty)
    np.testing.assert_array_equal(np.asarray(c["esp"])[big["grid_mask"]], b["esp"][big["grid_mask"]])
    assert np.all(np.asarray(c["esp"])[~big["grid_mask"]] == 0)


def test_build_model_round_trip_and_bad_keys():
    m = dcmnet.build_model({"type": "dcmnet", "n_dcm": 2, "max_displacement": 0.4})
    assert dcmnet.build_model(dcmnet.model_config(m)) == m
    for bad in ({"n_dcm": 0}, {"max_displacement": -1}, {"wings": 1}, {"type": "physnet"}, {"n_dcm": 1.5}):
        with pytest.raises(ValueError):
            dcmnet.build_model(bad)


# -- training through the engine on a synthetic ESP dataset of known charges


def _esp_dataset(path, n=24, seed=0):
    """Water conformers whose ESP is that of off-centre charges (O: -0.8 at 0.2 Å towards
    the Hs' midpoint... a lone-pair-like shift; H: +0.4 on the nucleus)."""
    rng = np.random.default_rng(seed)
    with PackedWriter(path) as w:
        for i in range(n):
            R = _water(rng)
            mid = R[1:].mean(0) - R[0]
            pos = np.array([R[0] + 0.2 * mid / np.linalg.norm(mid), R[1], R[2]])
            q = np.array([-0.8, 0.4, 0.4])
            grid = _shell_grid(R, rng, 40)
            esp = K_E * np.sum(q / np.linalg.norm(grid[:, None] - pos[None], axis=-1), axis=1)
            w.add(Structure(Z=np.array([8, 1, 1]), R=R, E=0.0, Qtot=0.0, q=q, grid=grid, esp=esp,
                            index=i).checked("synthetic"))
    return PackedDataset(path)


def test_dcmnet_trains_through_the_engine(tmp_path, capsys):
    import yaml

    from mmlwf.analysis.predict import load_run
    from mmlwf.cli import main
    from mmlwf.split import split_dataset

    _esp_dataset(tmp_path / "ds")
    split_dataset(tmp_path / "ds", tmp_path / "split.npz", valid=0.25, test=0.0, seed=0)
    cfg = {"model": {"type": "dcmnet", "n_dcm": 2, "features": 8, "num_iterations": 1, "cutoff": 3.0},
           "training": {"batch_size": 6, "learning_rate": 1e-2, "schedule": "constant", "warmup_steps": 0,
                        "ema_decay": 0.0, "max_epochs": 8, "esp_decay_length": 1.0,
                        "mono_weight": 1.0, "dipole_weight": 0.0}}
    run = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    # `mmlwf train` without --stats: DCMNet needs no element energies
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "ds"),
                 "--split", str(tmp_path / "split.npz"), "-o", str(run)]) == 0
    assert capsys.readouterr().out.startswith("completed: 8 epochs")
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert "valid_esp_rmse_kcal_per_mol_e" in rows[0] and "train_mono_mae_e" in rows[0]
    assert "train_energy_mae_eV" not in rows[0]
    first, last = float(rows[0]["valid_esp_rmse_kcal_per_mol_e"]), float(rows[-1]["valid_esp_rmse_kcal_per_mol_e"])
    assert last < 0.7 * first, (first, last)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    info = json.loads((run / "model.json").read_text())
    assert info["model"]["type"] == "dcmnet" and info["units"]["esp"] == "V"
    trained = load_run(run)
    assert isinstance(trained.model, dcmnet.DCMNet) and trained.model.n_dcm == 2
    assert trained.pair_cutoff == 3.0


def test_dcmnet_needs_an_esp_dataset(tmp_path):
    from mmlwf.split import split_dataset
    from mmlwf.training.runner import run_training

    rng = np.random.default_rng(0)
    with PackedWriter(tmp_path / "ds") as w:
        for i in range(6):
            w.add(Structure(Z=np.array([8, 1, 1]), R=_water(rng), E=0.0, index=i).checked("x"))
    split_dataset(tmp_path / "ds", tmp_path / "split.npz", valid=0.0, test=0.0)
    with pytest.raises(ConfigError, match="ESP dataset"):
        run_training({"model": {"type": "dcmnet"}}, tmp_path / "ds", tmp_path / "split.npz", None, tmp_path / "r")
