"""``mmlwf md --engine jax-md`` (:mod:`mmlwf.md.jax_engine`) against the ASE engine, and the stops
of both engines (:mod:`mmlwf.md.stops`).

The fast checks use the toy kind ``toy_pair_long`` (tests/toy_pair_long_model.py: a short-range
pair model plus a long-range term over a second pair list with a finite cutoff, so both JAX-MD
neighbour lists are used) with random parameters, in float64; the PhysNet check (every physics
term: charges, shielded Coulomb with its own list, ZBL) is marked slow.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mmlwf.errors import ConfigError
from mmlwf.md import MDSettings, run_md, run_md_jax
from mmlwf.models import registry

from .test_long_pairs import PLUGIN, _trained

pytest.importorskip("jax_md")

SHORT, LONG = 2.0, 3.5  # the toy's pair cutoffs (Å); the skin (0.5 Å) lies inside the long one


@pytest.fixture(scope="module")
def toy():
    """The ``toy_pair_long`` kind, registered through the plugin variable for this module."""
    old = os.environ.get(registry.PLUGINS_ENV)
    os.environ[registry.PLUGINS_ENV] = PLUGIN
    registry.load_plugins(force=True)
    yield registry.get("toy_pair_long")
    for name in ("toy_pair_long", "toy_pair"):
        registry.unregister(name)
    for module in (PLUGIN, "tests.toy_pair_model"):
        sys.modules.pop(module, None)
    if old is None:
        os.environ.pop(registry.PLUGINS_ENV, None)
    else:
        os.environ[registry.PLUGINS_ENV] = old


def chain(seed: int = 0, n: int = 8) -> Atoms:
    """``n`` atoms of a bent chain 1.2-1.6 Å apart: pairs on both sides of both cutoffs."""
    rng = np.random.default_rng(seed)
    R = np.cumsum(rng.normal(size=(n, 3)) * 0.2 + [1.4, 0.0, 0.0], axis=0)
    return Atoms(numbers=[6, 1, 8, 6, 1, 1, 8, 6][:n], positions=R)


def _model(toy, seed=0, long_cutoff=LONG):
    return _trained(toy, {"type": "toy_pair_long", "cutoff": SHORT, "long_cutoff": long_cutoff}, seed=seed)


def _ensemble(toy, members=3, noise=0.1):
    """An ensemble of perturbed copies of one toy model (member axis first), and its members."""
    from mmlwf.ensemble import stack_members
    from mmlwf.inference import TrainedModel

    base = _model(toy)
    rng = np.random.default_rng(7)
    trees = [jax.tree.map(lambda a: np.asarray(a) + noise * rng.standard_normal(np.shape(a)), base.params)
             for _ in range(members)]
    info = {**base.info, "ensemble": {"size": members, "kind": "full", "scale": {"forces": 1.5}}}
    ensemble = TrainedModel(base.model, stack_members(trees), info, base.reference, base.run_dir)
    return ensemble, [TrainedModel(base.model, t, base.info, base.reference, base.run_dir) for t in trees]


class EnsembleCalculator(Calculator):
    """Test double of an ensemble's ASE calculator: member-mean energy and forces, and
    ``forces_uncertainty`` (per atom, the spread times the ensemble's force scale)."""

    implemented_properties = ("energy", "forces")

    def __init__(self, members, scale):
        from mmlwf.calculator import MMLWFCalculator

        super().__init__()
        self.calcs = [MMLWFCalculator(m, dtype="float64") for m in members]
        self.scale = scale
        self.shapes_compiled = set()

    def check_atoms(self, atoms):
        return self.calcs[0].check_atoms(atoms)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from mmlwf.ensemble import member_stats

        super().calculate(atoms, properties, system_changes)
        energies, forces = [], []
        for c in self.calcs:
            c.calculate(self.atoms, ["energy", "forces"], all_changes)
            energies.append(c.results["energy"])
            forces.append(c.results["forces"])
        f, spread = member_stats(np.stack(forces), 1)
        self.results = {"energy": float(np.mean(energies)), "free_energy": float(np.mean(energies)),
                        "forces": f, "forces_uncertainty": spread * self.scale}


def _csv(path):
    return pd.read_csv(path / "energy.csv")


def _md(path):
    return json.loads((path / "md.json").read_text())


def test_nve_follows_ase_velocity_verlet_for_100_steps(toy, tmp_path, x64):
    from mmlwf.calculator import MMLWFCalculator

    trained, atoms = _model(toy), chain(1)
    settings = MDSettings(steps=100, dt_fs=0.5, temperature_K=600.0, min_distance_A=0.0, traj_every=10, seed=4)
    ase_run = run_md(MMLWFCalculator(trained, dtype="float64"), atoms, settings, tmp_path / "ase")
    [jax_run] = run_md_jax(trained, [atoms], settings, [tmp_path / "jax"], dtype="float64", chunk_steps=30)
    a, j = _csv(tmp_path / "ase"), _csv(tmp_path / "jax")
    assert list(a.columns) == list(j.columns) and len(a) == len(j) == 101
    np.testing.assert_allclose(j.to_numpy(), a.to_numpy(), rtol=0, atol=1e-8)
    assert np.ptp(a["Ekin_eV"]) > 100 * np.ptp(a["Etot_eV"])  # the atoms moved; energy conserved
    import ase.io

    fa = ase.io.read(tmp_path / "ase" / "trajectory.traj", ":")
    fj = ase.io.read(tmp_path / "jax" / "trajectory.traj", ":")
    assert len(fa) == len(fj) == 11
    for x, y in zip(fa, fj):
        np.testing.assert_allclose(y.positions, x.positions, atol=1e-9)
        np.testing.assert_allclose(y.get_forces(), x.get_forces(), atol=1e-8)
        np.testing.assert_allclose(y.get_momenta(), x.get_momenta(), atol=1e-8)
    assert jax_run["nve"]["max_abs_dEtot_meV"] == pytest.approx(ase_run["nve"]["max_abs_dEtot_meV"], rel=1e-4)
    assert jax_run["engine"] == "jax-md" and jax_run["stopped"] is None and jax_run["steps_done"] == 100


def test_a_long_list_of_every_pair_is_fixed_and_follows_ase(toy, tmp_path, x64):
    """``long_pair_cutoff`` inf (every ordered pair of the molecule, no JAX-MD list)."""
    from mmlwf.calculator import MMLWFCalculator

    trained, atoms = _model(toy, long_cutoff=None), chain(6)
    assert trained.long_pair_cutoff == float("inf")
    settings = MDSettings(steps=30, temperature_K=600.0, min_distance_A=0.0, traj_every=10)
    run_md(MMLWFCalculator(trained, dtype="float64"), atoms, settings, tmp_path / "ase")
    [j] = run_md_jax(trained, [atoms], settings, [tmp_path / "jax"], dtype="float64")
    assert j["neighbour_lists"]["long_capacity"] is None
    np.testing.assert_allclose(_csv(tmp_path / "jax").to_numpy(), _csv(tmp_path / "ase").to_numpy(), atol=1e-8)


@pytest.mark.slow  # three compilations, ~25 s on 2 busy cores
def test_an_overflowing_neighbour_list_reruns_the_chunk_with_a_larger_one(toy, tmp_path, x64):
    trained, atoms = _model(toy), chain(2)
    settings = MDSettings(steps=60, temperature_K=3000.0, min_distance_A=0.0, traj_every=5)
    [ample] = run_md_jax(trained, [atoms], settings, [tmp_path / "ample"], dtype="float64", chunk_steps=10)
    lists = ample["neighbour_lists"]
    assert lists["chunk_reruns"] == 0 and lists["grown_at_start"] == 0
    from jax_md import space

    from mmlwf.md.jax_engine import SKIN_A, _Lists

    exact = _Lists(__import__("jax_md").partition, space.free()[0], len(atoms), SHORT, SKIN_A).occupancy(atoms.positions)
    [tight] = run_md_jax(trained, [atoms], settings, [tmp_path / "tight"], dtype="float64", chunk_steps=10,
                         capacity=exact, long_capacity=2)
    got = tight["neighbour_lists"]
    assert got["grown_at_start"] >= 1  # the long list of 2 slots
    assert got["chunk_reruns"] >= 1 and got["capacity"] > exact  # pairs came within reach during the run
    np.testing.assert_allclose(_csv(tmp_path / "tight").to_numpy(), _csv(tmp_path / "ample").to_numpy(), atol=1e-10)


@pytest.mark.slow  # three compilations, ~30 s on 2 busy cores
def test_replicas_run_batched_as_they_run_alone(toy, tmp_path, x64):
    trained = _model(toy)
    starts = [chain(1), chain(1), chain(3)]
    starts[2].numbers = starts[0].numbers
    settings = MDSettings(steps=20, temperature_K=300.0, min_distance_A=0.0, traj_every=4, seed=10)
    outs = [tmp_path / f"r{k}" for k in range(3)]
    runs = run_md_jax(trained, starts, settings, outs, dtype="float64")
    assert [r["replicas"] for r in runs] == [3, 3, 3]
    for k in (1, 2):
        alone = MDSettings(**{**settings.__dict__, "seed": settings.seed + k})
        run_md_jax(trained, [starts[k]], alone, [tmp_path / f"alone{k}"], dtype="float64")
        np.testing.assert_allclose(_csv(outs[k]).to_numpy(), _csv(tmp_path / f"alone{k}").to_numpy(), atol=1e-10)
    assert not np.allclose(_csv(outs[0])["Epot_eV"], _csv(outs[1])["Epot_eV"])  # other velocities
    bad = chain(1)
    bad.numbers = bad.numbers[::-1]
    with pytest.raises(Exception, match="one composition"):
        run_md_jax(trained, [starts[0], bad], settings, [tmp_path / "x", tmp_path / "y"])


def test_uncertainty_stop_at_the_step_of_the_first_exceedance_in_both_engines(toy, tmp_path, x64):
    ensemble, members = _ensemble(toy)
    start = chain(4)  # hot: the chain is driven out of where the members agree
    base = {"steps": 80, "temperature_K": 3000.0, "min_distance_A": 0.0, "traj_every": 10, "seed": 2}
    # the step-by-step reference: the ASE engine with the test-double ensemble calculator
    calc = EnsembleCalculator(members, scale=1.5)
    ref = run_md(calc, start, MDSettings(**base, uncertainty_lower_eV_per_A=1e-9), tmp_path / "ref")
    u = _csv(tmp_path / "ref")["max_force_uncertainty_eV_per_A"].to_numpy()
    assert ref["stopped"] is None and len(u) == 81
    running = np.maximum.accumulate(u)
    jumps = [s for s in range(3, 80) if running[s] > running[s - 1] * 1.001 and s % 10]
    assert jumps, f"the uncertainty never rose to a new high off the frame grid: {u}"
    s_star = jumps[0]
    upper = (running[s_star - 1] + u[s_star]) / 2
    lower = 0.9 * float(np.min(u[: s_star : 10]))  # the frames before the stop are candidates
    settings = MDSettings(**base, uncertainty_upper_eV_per_A=upper, uncertainty_lower_eV_per_A=lower)
    [j] = run_md_jax(ensemble, [start], settings, [tmp_path / "jax"], dtype="float64", chunk_steps=40)
    from mmlwf.calculator import MMLWFCalculator

    # the ASE engine with the package's own ensemble calculator (its forces_uncertainty, scaled)
    a = run_md(MMLWFCalculator(ensemble, dtype="float64"), start, settings, tmp_path / "ase")
    for run, out in ((j, tmp_path / "jax"), (a, tmp_path / "ase")):
        stopped = run["stopped"]
        assert stopped["reason"] == "uncertainty" and stopped["step"] == s_star == run["steps_done"]
        assert stopped["value"] == pytest.approx(u[s_star], rel=1e-6) and stopped["value"] > upper
        assert stopped["time_fs"] == s_star * settings.dt_fs and len(stopped["atoms"]) == 1
        log = _csv(out)
        assert log["step"].iloc[-1] == s_star
        np.testing.assert_allclose(log["max_force_uncertainty_eV_per_A"], u[: s_star + 1], rtol=1e-6)
        frames = [10 * k for k in range(s_star // 10 + 1)] + [s_star]  # the stop frame, off the grid
        cand = run["candidates"]
        expect = [k for k, s in enumerate(frames) if lower < u[s] <= upper]
        assert expect and cand["frames"] == expect and cand["steps"] == [frames[k] for k in expect]
    import ase.io

    last = ase.io.read(tmp_path / "jax" / "trajectory.traj", -1)
    ref_frame = ase.io.read(tmp_path / "ase" / "trajectory.traj", -1)
    np.testing.assert_allclose(last.positions, ref_frame.positions, atol=1e-9)


def test_uncertainty_levels_need_an_ensemble(toy, tmp_path):
    with pytest.raises(ConfigError, match="need an ensemble"):
        run_md_jax(_model(toy), [chain()], MDSettings(steps=2, uncertainty_upper_eV_per_A=1.0), [tmp_path / "o"])
    with pytest.raises(ConfigError, match="must be below"):
        MDSettings(steps=2, uncertainty_upper_eV_per_A=1.0, uncertainty_lower_eV_per_A=2.0).check()


def _mean_and_error(T: np.ndarray, block: int) -> tuple[float, float]:
    """Mean of a correlated series and its standard error from block means."""
    means = T[: len(T) // block * block].reshape(-1, block).mean(axis=1)
    return float(means.mean()), float(means.std(ddof=1) / np.sqrt(len(means)))


@pytest.mark.slow
def test_langevin_runs_of_both_engines_hold_the_set_temperature(toy, tmp_path):
    from mmlwf.calculator import MMLWFCalculator

    trained, atoms = _model(toy), chain(5)
    settings = MDSettings(steps=4000, dt_fs=1.0, ensemble="nvt", temperature_K=300.0, friction_per_fs=0.05,
                          min_distance_A=0.0, traj_every=500, seed=1)
    run_md(MMLWFCalculator(trained), atoms, settings, tmp_path / "ase")
    run_md_jax(trained, [atoms] * 4, settings, [tmp_path / f"jax{k}" for k in range(4)])
    series = {"ase": _csv(tmp_path / "ase")["T_K"].to_numpy()[500:]}
    series["jax"] = np.concatenate([_csv(tmp_path / f"jax{k}")["T_K"].to_numpy()[500:] for k in range(4)])
    for name, T in series.items():
        mean, err = _mean_and_error(T, 100)
        assert err < 0.1 * 300.0, name
        assert abs(mean - 300.0) < 4 * err, (name, mean, err)
    com = _csv(tmp_path / "jax0")  # the centre of mass stays put: 3N - 3 degrees of freedom as ASE's FixCom
    import ase.io

    frames = ase.io.read(tmp_path / "jax0" / "trajectory.traj", ":")
    np.testing.assert_allclose([f.get_center_of_mass() for f in frames], [atoms.get_center_of_mass()] * len(frames),
                               atol=1e-4)
    assert len(com) == 4001


@pytest.mark.slow
def test_physnet_nve_with_every_physics_term_follows_ase(tmp_path, x64):
    """PhysNet with charges, shielded Coulomb over its own (finite) long list and ZBL, random
    parameters: the JAX-MD trajectory is ASE's."""
    from ase.build import molecule

    from mmlwf.batch import from_molecules
    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.element_energies import reference_table
    from mmlwf.inference import TrainedModel
    from mmlwf.models import build_model, init_params

    config = {"type": "physnet", "features": 8, "max_degree": 1, "num_iterations": 2, "num_basis_functions": 8,
              "cutoff": 2.5, "num_residual": 1, "charges": True, "coulomb": True, "repulsion": True,
              "coulomb_cutoff": 4.0}
    model = build_model(config)
    example = from_molecules([{"Z": np.array([6, 1]), "R": np.eye(2, 3)}], n_graphs=2, n_atoms=4, n_pairs=4,
                             long_cutoff=4.0, dtype=np.float64)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape) / np.sqrt(s.shape[-2] if len(s.shape) >= 2 else 4),
                          shapes)
    trained = TrainedModel(model, params, {"model": config}, reference_table({1: -13.6, 6: -1029.5, 8: -2041.3}),
                           tmp_path)
    atoms = molecule("CH3CH2OH")
    settings = MDSettings(steps=100, temperature_K=300.0, min_distance_A=0.0)
    run_md(MMLWFCalculator(trained, dtype="float64"), atoms, settings, tmp_path / "ase")
    run_md_jax(trained, [atoms], settings, [tmp_path / "jax"], dtype="float64")
    np.testing.assert_allclose(_csv(tmp_path / "jax").to_numpy(), _csv(tmp_path / "ase").to_numpy(), atol=1e-8)
