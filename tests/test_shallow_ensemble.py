"""The shallow ensemble (issue 16, point 1): one PhysNet representation with H output heads.

Physics on a tiny model with charges and Coulomb (float64): heads start distinct, the energy is
the heads' mean and the training forces its exact negative gradient, each head's forces (the
heads forward, H backward passes) the negative gradient of its energy, spreads invariant under
rotation, translation, atom permutation and padding, the NLL sums as written by hand. Then a
short training through the CLI (model.json, fitted scales, calculator, evaluation, export, MD
stop) and the one-line errors of bad settings.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule

from mmlwf.batch import from_molecules
from mmlwf.errors import ConfigError
from mmlwf.inference import jitted_forward
from mmlwf.models.common import init_params
from mmlwf.models.heads import head_energy_and_forces
from mmlwf.models.physnet import build_model, energy_and_forces, model_config
from mmlwf.training.losses import NLL_VAR_FLOOR, batch_sums

from .analysis_fixtures import trained_run  # noqa: F401

H = 4
TINY = {"features": 8, "num_iterations": 2, "num_basis_functions": 8, "cutoff": 4.0, "charges": True,
        "coulomb": True, "output_heads": H}


def _batch(atoms_list, n_graphs: int = 3, n_atoms: int = 24, n_pairs: int = 300, dtype=np.float64):
    mols = [{"Z": a.numbers, "R": a.positions, "Qtot": 0.0} for a in atoms_list]
    return from_molecules(mols, n_graphs=n_graphs, n_atoms=n_atoms, n_pairs=n_pairs, cutoff=TINY["cutoff"],
                          dtype=dtype)


def _ethanol(seed: int = 0):
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(seed).normal(0, 0.05, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def tiny():
    """``(model, params)``: a tiny PhysNet with :data:`H` heads (float64 parameters; the tests
    using it run under the ``x64`` fixture)."""
    with jax.enable_x64(True):
        model = build_model(TINY)
        params = init_params(model, jax.random.PRNGKey(0), _batch([_ethanol()]))
        return model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)


def _output_kernel(params) -> np.ndarray:
    """The kernel of the first module's output layer (e3x nests it under its parity key)."""
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(params["params"]["output_0"])
    return np.asarray(next(v for k, v in flat.items() if k[-1] == "kernel"))


def _energy(model, params, R, batch, key="energy_members"):
    from mmlwf.models.common import batch_inputs

    out = model.apply(params, **{**batch_inputs(batch), "R": R})
    return np.asarray(out[key])


def test_heads_differ_after_init(tiny, x64):
    model, params = tiny
    kernel = _output_kernel(params)
    assert kernel.shape[-1] == 2 * H  # charges on: energy and charge per head
    out = energy_and_forces(model, params, _batch([_ethanol()]))
    assert out["energy_members"].shape == (H, 3)
    E = np.asarray(out["energy_members"])[:, 0]
    assert np.min(np.abs(E[:, None] - E[None, :]) + np.eye(H)) > 1e-4  # every pair of heads differs


def test_single_head_is_todays_model(x64):
    """output_heads 1: zero-initialised output layers (the fresh model sits at its shift), no head outputs."""
    model = build_model({k: v for k, v in TINY.items() if k != "output_heads"})
    params = init_params(model, jax.random.PRNGKey(0), _batch([_ethanol()]))
    assert model.output_heads == 1 and not np.any(_output_kernel(params))
    assert _output_kernel(params).shape[-1] == 2
    out = energy_and_forces(model, params, _batch([_ethanol()]))
    assert "energy_members" not in out and out["energy"].shape == (3,)
    assert "output_heads" not in model_config(model)  # model.json of a single model as before heads existed
    assert model_config(build_model(TINY))["output_heads"] == H


def test_energy_is_mean_and_forces_its_exact_gradient(tiny, x64):
    """Training forward: energy = mean of the heads, forces = -dE_mean/dR (central differences,
    float64); heads forward: head h's forces = -dE_h/dR, and their mean the training forces."""
    model, params = tiny
    batch = _batch([_ethanol(0), _ethanol(1)])
    out = energy_and_forces(model, params, batch)
    heads = head_energy_and_forces(model, params, batch)
    np.testing.assert_allclose(out["energy"], np.mean(out["energy_members"], axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(heads["energy"], out["energy_members"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.mean(heads["forces"], axis=0), out["forces"], rtol=0, atol=1e-10)
    R0, h = np.asarray(batch.R), 1e-5
    for atom, xyz in ((0, 0), (4, 1), (11, 2)):  # atoms of both molecules
        step = np.zeros_like(R0)
        step[atom, xyz] = h
        plus = _energy(model, params, R0 + step, batch)
        minus = _energy(model, params, R0 - step, batch)
        fd = -(plus - minus).sum(axis=1) / (2 * h)  # (H,): each head's total energy over the graphs
        np.testing.assert_allclose(np.asarray(heads["forces"])[:, atom, xyz], fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(out["forces"][atom, xyz], fd.mean(), rtol=1e-6, atol=1e-8)
    assert np.ptp(np.asarray(heads["forces"]), axis=0).max() > 1e-4  # heads' forces differ


def _spreads(model, params, atoms, **sizes):
    out = jitted_forward(model, "shallow")(params, _batch([atoms], **sizes))  # one compile per shape
    n = len(atoms)
    return float(out["energy_spread"][0]), np.array(out["forces_spread"])[:n], np.array(out["forces"])[:n]


def test_spreads_invariant_under_symmetries_and_padding(tiny, x64):
    from scipy.spatial.transform import Rotation

    model, params = tiny
    atoms = _ethanol(2)
    e, f, F = _spreads(model, params, atoms)
    assert e > 0 and f.min() > 0
    moved = atoms.copy()
    rot = Rotation.random(random_state=3)
    moved.positions = rot.apply(atoms.positions) + np.array([3.0, -1.0, 7.5])
    e2, f2, F2 = _spreads(model, params, moved)
    np.testing.assert_allclose([e2, *f2], [e, *f], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F2, rot.apply(F), rtol=0, atol=1e-10)  # forces rotate with the molecule
    perm = np.random.default_rng(4).permutation(len(atoms))
    e3, f3, _ = _spreads(model, params, atoms[perm])
    np.testing.assert_allclose([e3, *f3], [e, *f[perm]], rtol=1e-9, atol=1e-12)
    e4, f4, _ = _spreads(model, params, atoms, n_graphs=5, n_atoms=40, n_pairs=500)  # more padding
    np.testing.assert_allclose([e4, *f4], [e, *f], rtol=1e-9, atol=1e-12)


def test_nll_sums_match_the_formula(tiny, x64):
    model, params = tiny
    batch = _batch([_ethanol(0), _ethanol(5)])
    out = energy_and_forces(model, params, batch)
    E_target = np.array([0.3, -0.2, 0.0])  # the third graph is padding
    sums = batch_sums(out, _device(batch, E_target))
    members = np.asarray(out["energy_members"], np.float64)[:, :2]
    mean = members.mean(axis=0)
    var = ((members - mean) ** 2).mean(axis=0) + NLL_VAR_FLOOR
    expected = np.sum(0.5 * (np.log(var) + (mean - E_target[:2]) ** 2 / var))
    np.testing.assert_allclose(float(sums["nll_loss_sse"]), expected, rtol=1e-10)
    assert float(sums["nll_loss_n"]) == 2.0
    single = {k: v for k, v in out.items() if k != "energy_members"}
    assert "nll_loss_sse" not in batch_sums(single, _device(batch, E_target))


def _device(batch, E_target) -> dict:
    """``batch`` as the training step sees it (no absent fields) with the energy target ``E_target``."""
    return {**{k: v for k, v in batch._asdict().items() if v is not None}, "E_target": jnp.asarray(E_target)}


def test_bad_settings_are_one_line():
    from mmlwf.training import load_config

    with pytest.raises(ConfigError, match="ensemble.kind: shallow needs a model with output heads") as exc:
        load_config({"model": {"type": "dcmnet"}, "ensemble": {"size": 3, "kind": "shallow"}})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="ensemble.loss") as exc:
        load_config({"ensemble": {"size": 3, "kind": "shallow", "loss": "crps"}})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="model.output_heads is set from ensemble.size"):
        load_config({"model": {"output_heads": 2}, "ensemble": {"size": 3, "kind": "shallow"}})
    with pytest.raises(ConfigError, match="model.output_heads"):
        load_config({"model": {"output_heads": 2}})
    config = load_config({"ensemble": {"size": 3, "kind": "shallow"}})
    assert config.model["output_heads"] == 3 and config.members == 1 and config.ensemble_size == 3
    assert config.ensemble.loss == "nll"
    full = load_config({"ensemble": {"size": 3}})
    assert "output_heads" not in full.model and full.members == 3
    assert full.to_dict()["ensemble"] == {"size": 3, "kind": "full", "bootstrap": False, "calibrate": True}  # no shallow-only keys
    with pytest.raises(ConfigError, match="ensemble.loss applies to kind: shallow only"):
        load_config({"ensemble": {"size": 3, "loss": "mse"}})


@pytest.fixture(scope="module")
def shallow_run(trained_run, tmp_path_factory):  # noqa: F811
    """A shallow ensemble of 3 heads trained for 2 epochs on the tiny formaldehyde data."""
    from mmlwf.cli import main

    run = tmp_path_factory.mktemp("shallow") / "run"
    t = trained_run
    code = main(["train", "--data", str(t.data), "--split", str(t.split), "--stats", str(t.root / "stats.json"),
                 "-o", str(run), "--set", "model.features=8", "--set", "model.num_iterations=1",
                 "--set", "model.num_basis_functions=8", "--set", "model.charges=true",
                 "--set", "training.batch_size=16", "--set", "training.max_epochs=2",
                 "--set", "training.learning_rate=3e-3", "--set", "ensemble.size=3",
                 "--set", "ensemble.kind=shallow"])
    assert code == 0
    return run


def test_shallow_training_run_and_inference(shallow_run, trained_run, tmp_path):  # noqa: F811
    from ase import Atoms

    from mmlwf.analysis.predict import predict
    from mmlwf.batch import device_fields
    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.export import FORMAT_VERSION, export_model
    from mmlwf.inference import load_run
    from mmlwf.packed import PackedDataset

    info = json.loads((shallow_run / "model.json").read_text())
    ens = info["ensemble"]
    assert ens["size"] == 3 and ens["kind"] == "shallow" and ens["loss"] == "nll"
    assert info["model"]["output_heads"] == 3 and ens["scale"]["energy"] > 0 and ens["scale"]["forces"] > 0
    header = (shallow_run / "history.csv").read_text().splitlines()[0]
    assert "valid_loss_m0" not in header  # one parameter set: no per-member columns
    run = load_run(shallow_run)
    assert run.is_ensemble and run.members == 3 and run.ensemble_kind == "shallow"
    assert all(leaf.shape[:1] != (3,) or leaf.ndim == 1 for leaf in jax.tree.leaves(run.params))

    g = PackedDataset(trained_run.data).gather(np.array([2]), fields=("Z", "R"))
    atoms = Atoms(numbers=g["Z"], positions=g["R"])
    calc = MMLWFCalculator(run)
    atoms.calc = calc
    atoms.get_potential_energy()
    res = dict(calc.results)
    heads = jax.device_get(head_energy_and_forces(run.model, calc.params, device_fields(calc.batch(atoms))))
    n = len(atoms)
    E, F = np.asarray(heads["energy"], np.float64)[:, 0], np.asarray(heads["forces"], np.float64)[:, :n]
    spread_E = np.std(E)
    spread_F = np.sqrt(np.mean(np.sum((F - F.mean(0)) ** 2, axis=-1), axis=0))
    assert spread_E > 0 and spread_F.min() > 0
    np.testing.assert_allclose(res["forces"], F.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(res["energy_uncertainty"], ens["scale"]["energy"] * spread_E, rtol=1e-5)
    np.testing.assert_allclose(res["forces_uncertainty"], ens["scale"]["forces"] * spread_F, rtol=1e-5, atol=1e-9)

    pred = predict(run, PackedDataset(trained_run.data), np.arange(4), batch_size=4)
    assert pred["E_spread"].shape == (4,) and np.all(pred["E_spread"] > 0) and pred["F_spread"].min() > 0

    meta = export_model(shallow_run, tmp_path / "shallow.mmlwf")
    assert meta["format_version"] == FORMAT_VERSION and meta["ensemble"]["kind"] == "shallow"
    other = MMLWFCalculator.from_file(tmp_path / "shallow.mmlwf")
    atoms.calc = other
    atoms.get_potential_energy()
    for key in ("energy", "forces", "energy_uncertainty", "forces_uncertainty", "dipole"):
        np.testing.assert_array_equal(other.results[key], res[key])


def test_md_uncertainty_stop_of_a_shallow_model_in_both_engines(shallow_run, trained_run, tmp_path, x64):  # noqa: F811
    """Both MD engines stop a shallow model's run on its per-atom force spread (scaled), at the
    same step with the same value; at the start it is the calculator's largest forces_uncertainty."""
    pytest.importorskip("jax_md")
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.inference import load_run
    from mmlwf.md import MDSettings, run_md, run_md_jax
    from mmlwf.packed import PackedDataset

    run = load_run(shallow_run)
    g = PackedDataset(trained_run.data).gather(np.array([3]), fields=("Z", "R"))
    atoms = Atoms(numbers=g["Z"], positions=g["R"])
    calc = MMLWFCalculator(run, dtype="float64")
    probe = atoms.copy()
    probe.calc = calc
    probe.get_potential_energy()
    u0 = float(np.max(calc.results["forces_uncertainty"]))
    settings = MDSettings(steps=6, temperature_K=300.0, min_distance_A=0.0, seed=1,
                          uncertainty_upper_eV_per_A=0.5 * u0)
    a = run_md(calc, atoms, settings, tmp_path / "ase")
    [j] = run_md_jax(run, [atoms], settings, [tmp_path / "jax"], dtype="float64")
    assert a["stopped"]["reason"] == j["stopped"]["reason"] == "uncertainty"
    assert a["stopped"]["step"] == j["stopped"]["step"] == 0
    assert a["stopped"]["value"] == pytest.approx(u0, rel=1e-6) and j["stopped"]["value"] == pytest.approx(u0, rel=1e-6)
