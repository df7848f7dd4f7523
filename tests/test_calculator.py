"""ASE calculator, export and ``mmlwf md``: finite-difference forces, invariance, identical
predictions after export, loading without orbax/optax, short NVE/NVT runs, bad inputs.

The model is a small PhysNet with every physics term on (charges, Coulomb, ZBL) and random
parameters (trained ones would only be slower to make; the checks hold for any parameters),
saved as a run directory the way training writes one (model.json + orbax best checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from mmlwf.calculator import MMLWFCalculator, bucket
from mmlwf.cli import main
from mmlwf.errors import ConfigError, DataError

from .test_batch import assert_padding_convention

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"type": "physnet", "features": 8, "max_degree": 1, "num_iterations": 2, "num_basis_functions": 8,
          "cutoff": 4.0, "num_residual": 1, "charges": True, "coulomb": True, "repulsion": True,
          "coulomb_cutoff": 6.0}
ELEMENT_ENERGIES = {1: -13.6, 6: -1029.5, 8: -2041.3}  # eV, magnitudes like real references


def _random_variables(model, seed):
    """Random parameters of the model's shapes (zero-initialised outputs would give E = 0)."""
    from mmlwf.models import init_params

    from mmlwf.batch import from_molecules

    methane = {"Z": np.array([6, 1, 1, 1, 1]), "R": np.random.default_rng(0).normal(size=(5, 3))}
    example = from_molecules([methane], n_graphs=2, n_atoms=8, n_pairs=64, pairs=(np.zeros(0), np.zeros(0)))
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = jax.tree_util.keystr(path)
        if len(leaf.shape) >= 2:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[-2])
        elif "gate" in name or "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = 0.3 * rng.standard_normal(leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it: model.json and a best checkpoint (with EMA)."""
    from mmlwf.models import build_model
    from mmlwf.training import CheckpointStore, config_from_dict
    from mmlwf.training.engine import model_info

    run = tmp_path_factory.mktemp("calc") / "run"
    run.mkdir()
    config = config_from_dict({"model": CONFIG, "training": {"ema_decay": 0.99}})
    info = model_info(config, ELEMENT_ENERGIES, ["energy", "forces", "charges", "dipole"], None)
    (run / "model.json").write_text(json.dumps(info))
    model = build_model(CONFIG)
    store = CheckpointStore(run / "checkpoints")
    store.save_best(1, _random_variables(model, 1), _random_variables(model, 2), {"epoch": 1})
    store.close()
    return run


@pytest.fixture(scope="module")
def exported(run_dir):
    path = run_dir.parent / "model.mmlwf"
    assert main(["export", str(run_dir), "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def calc(run_dir):
    return MMLWFCalculator.from_run(run_dir)


def ethanol(seed=0, noise=0.05):
    atoms = molecule("CH3CH2OH")
    atoms.positions += noise * np.random.default_rng(seed).standard_normal(atoms.positions.shape)
    return atoms


def evaluate(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_charges(), atoms.get_dipole_moment()


def _python(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter (repository on the path); return its stdout."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False,
                          env=full_env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# -- physics


@pytest.fixture(scope="module")
def fresh_process(exported):
    """One fresh interpreter with jax x64 on and orbax/optax blocked (any import of them
    fails) that loads the exported file: float64 forces with their finite differences,
    float64 predictions for :func:`test_export_loads_without_orbax_or_optax`, and whether
    orbax/optax got imported."""
    out = _python(f"""
        import sys
        for name in ("orbax", "orbax.checkpoint", "optax"):
            sys.modules[name] = None
        import json, numpy as np
        from ase.build import molecule
        from mmlwf.calculator import MMLWFCalculator

        def ethanol(seed):
            atoms = molecule("CH3CH2OH")
            atoms.positions += 0.05 * np.random.default_rng(seed).standard_normal(atoms.positions.shape)
            return atoms

        atoms = ethanol(0)
        atoms.calc = MMLWFCalculator.from_file({str(exported)!r}, dtype="float64")
        F = atoms.get_forces()
        h, fd = 1e-4, np.zeros_like(F)
        for i in range(len(atoms)):
            for k in range(3):
                p = atoms.positions.copy()
                p[i, k] += h; atoms.positions = p; ep = atoms.get_potential_energy()
                p[i, k] -= 2 * h; atoms.positions = p; em = atoms.get_potential_energy()
                p[i, k] += h; atoms.positions = p
                fd[i, k] = -(ep - em) / (2 * h)
        other = ethanol(7)
        other.calc = atoms.calc
        print(json.dumps({{"fd_err": float(np.abs(F - fd).max()), "F_scale": float(np.abs(F).max()),
                          "E64": other.get_potential_energy(), "F64": other.get_forces().tolist(),
                          "imported": [m for m in ("orbax", "optax") if sys.modules.get(m) is not None]}}))
    """, JAX_ENABLE_X64="1")
    return json.loads(out.strip().splitlines()[-1])


def test_float64_forces_equal_finite_differences_of_calculator_energies(fresh_process):
    """Strict check in float64: central differences of the calculator's energies (h = 1e-4 Å:
    truncation ~h^2 x third derivative ~ 1e-8, rounding ~1e-16 x 4000 eV / 2h ~ 2e-9 eV/Å)
    equal its forces."""
    assert fresh_process["F_scale"] > 0.1, fresh_process  # a model with real forces, not a flat one
    assert fresh_process["fd_err"] < 1e-6, fresh_process


def test_float32_forces_match_finite_differences_loosely(calc):
    """Float32 network: its energy carries ~1e-5 eV of rounding noise (sums of atomic terms of
    a few eV each); with h = 1e-2 Å that is ~5e-4 eV/Å in the differences, and the truncation
    error (h^2/6 times the third derivative) ~1e-4 eV/Å, so 2e-3 eV/Å still catches wrong
    forces (|F| ~ 1 eV/Å)."""
    atoms = ethanol(1)
    atoms.calc = calc
    F = atoms.get_forces()
    h = 1e-2
    for i, k in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        p = atoms.positions.copy()
        p[i, k] += h
        atoms.positions = p
        ep = atoms.get_potential_energy()
        p[i, k] -= 2 * h
        atoms.positions = p
        em = atoms.get_potential_energy()
        p[i, k] += h
        atoms.positions = p
        assert abs(-(ep - em) / (2 * h) - F[i, k]) < 2e-3, (i, k)


def test_energy_invariant_under_rotation_and_translation_forces_rotate(calc):
    from scipy.spatial.transform import Rotation

    atoms = ethanol(2)
    E, F, q, D = evaluate(calc, atoms)
    rot = Rotation.random(random_state=3).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([3.0, -7.0, 11.0])
    E2, F2, q2, D2 = evaluate(calc, moved)
    assert abs(E2 - E) < 1e-4  # float32 network (|E_model| ~ eV)
    np.testing.assert_allclose(F2, F @ rot.T, atol=1e-4)
    np.testing.assert_allclose(q2, q, atol=1e-5)
    np.testing.assert_allclose(D2, D @ rot.T, atol=1e-4)


def test_charges_sum_to_total_charge_and_give_the_dipole(run_dir):
    calc = MMLWFCalculator.from_run(run_dir, charge=1.0)
    atoms = ethanol(4)
    E, _, q, D = evaluate(calc, atoms)
    assert abs(q.sum() - 1.0) < 1e-5
    centre = atoms.positions.mean(axis=0)
    np.testing.assert_allclose(D, (q[:, None] * (atoms.positions - centre)).sum(axis=0), atol=1e-4)
    # the energies include the float64 element references
    assert abs(E - sum(ELEMENT_ENERGIES[z] for z in atoms.numbers)) < 50.0


def test_padding_buckets_and_one_compilation_over_moves(run_dir):
    assert [bucket(n, 8) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 32]
    calc = MMLWFCalculator.from_run(run_dir)
    atoms = ethanol(5)
    atoms.calc = calc
    for step in range(5):
        atoms.positions = atoms.positions + 0.01 * step
        atoms.get_forces()
    assert calc.shapes_compiled == {(16, 128, 128)}  # 9 atoms; pairs within the cutoff and all 72 pairs (Coulomb), each padded to 128
    assert_padding_convention(calc.batch(atoms))  # the loader's: graph 1 and the last atom are padding
    if hasattr(calc._evaluate, "_cache_size"):  # shared by this model's calculators
        assert calc._evaluate._cache_size() == 1


def test_properties_follow_the_model(run_dir, tmp_path):
    from mmlwf.analysis.predict import TrainedModel
    from mmlwf.export import reference_table
    from mmlwf.models import build_model

    plain = build_model({**CONFIG, "charges": False, "coulomb": False})
    calc = MMLWFCalculator(TrainedModel(plain, {}, {}, reference_table(ELEMENT_ENERGIES), tmp_path))
    assert "charges" not in calc.implemented_properties and "forces" in calc.implemented_properties
    atoms = ethanol()
    atoms.calc = calc
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_charges()


# -- export


def test_export_reload_gives_identical_predictions(run_dir, exported, calc, tmp_path):
    atoms = ethanol(6)
    from_run = evaluate(calc, atoms)
    from_file = evaluate(MMLWFCalculator.from_file(exported), atoms)
    assert from_file[0] == from_run[0]
    for a, b in zip(from_run[1:], from_file[1:]):
        np.testing.assert_array_equal(a, b)
    again = tmp_path / "again.mmlwf"
    assert main(["export", str(run_dir), "-o", str(again)]) == 0
    assert again.read_bytes() == exported.read_bytes()  # deterministic bytes


def test_export_loads_without_orbax_or_optax(fresh_process, calc):
    E, F, _, _ = evaluate(calc, ethanol(7))
    assert fresh_process["imported"] == []
    # the same model evaluated in float64 there and in float32 here: they agree to float32
    # rounding accumulated through the network (~1e-5 eV; forces ~1e-4 relative: this random
    # model's forces reach 20 eV/Å); another parameter set would differ by ~1 eV and eV/Å
    assert fresh_process["E64"] == pytest.approx(E, abs=1e-4)
    np.testing.assert_allclose(np.array(fresh_process["F64"]), F, rtol=2e-4, atol=2e-4)


def test_corrupt_or_truncated_export_is_a_one_line_error(exported, tmp_path):
    from mmlwf.export import read_exported
    from mmlwf.fileio import save_npz_deterministic

    with np.load(exported, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["p00003"] = members["p00003"] * 1.001  # a valid zip whose content was edited
    edited = tmp_path / "edited.mmlwf"
    save_npz_deterministic(edited, members)
    with pytest.raises(DataError, match="sha256"):
        read_exported(edited)
    truncated = tmp_path / "truncated.mmlwf"
    truncated.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated.mmlwf"):
        read_exported(truncated)


# -- md


def _md(model, structure, out, *extra):
    return main(["md", str(model), "--structure", str(structure), "--steps", "20", "--traj-every", "10",
                 "-o", str(out), *extra])


def test_md_nve_and_nvt_write_trajectory_and_energy_log(exported, run_dir, tmp_path, capsys):
    import ase.io
    import pandas as pd

    xyz = tmp_path / "ethanol.xyz"
    ase.io.write(xyz, ethanol(8))
    assert _md(exported, xyz, tmp_path / "nve", "--dt-fs", "0.25") == 0
    log = pd.read_csv(tmp_path / "nve" / "energy.csv")
    assert list(log.columns) == ["step", "time_fs", "Epot_eV", "Ekin_eV", "Etot_eV", "T_K", "min_distance_A"]
    assert log["step"].tolist() == list(range(21))
    assert np.allclose(log["time_fs"], 0.25 * log["step"])
    np.testing.assert_allclose(log["Etot_eV"], log["Epot_eV"] + log["Ekin_eV"], atol=1e-8)
    # velocity Verlet over 5 fs: the total energy moves far less than the kinetic energy does
    assert np.ptp(log["Etot_eV"]) < 0.05 * np.ptp(log["Ekin_eV"]) + 1e-4
    frames = ase.io.read(tmp_path / "nve" / "trajectory.traj", index=":")
    assert len(frames) == 3 and frames[-1].get_potential_energy() == pytest.approx(log["Epot_eV"].iloc[-1])
    summary = json.loads((tmp_path / "nve" / "md.json").read_text())
    assert summary["steps_done"] == 20 and "drift_meV_per_atom_per_ps" in summary["nve"]
    assert summary["closest_approach"]["min_distance_A"] == pytest.approx(log["min_distance_A"].min())

    assert _md(run_dir, xyz, tmp_path / "nvt", "--ensemble", "nvt", "--temperature-K", "500", "--seed", "3") == 0
    assert (tmp_path / "nvt" / "trajectory.traj").exists() and "nve" not in json.loads(
        (tmp_path / "nvt" / "md.json").read_text())
    # same seed, same run
    assert _md(run_dir, xyz, tmp_path / "nvt2", "--ensemble", "nvt", "--temperature-K", "500", "--seed", "3") == 0
    assert (tmp_path / "nvt" / "energy.csv").read_text() == (tmp_path / "nvt2" / "energy.csv").read_text()
    # an existing output is not replaced without --overwrite
    assert _md(exported, xyz, tmp_path / "nve") == 2
    assert "exists" in capsys.readouterr().err


def test_md_stops_when_atoms_come_too_close(exported, tmp_path, capsys):
    import ase.io

    xyz = tmp_path / "ethanol.xyz"
    ase.io.write(xyz, ethanol(9))
    assert _md(exported, xyz, tmp_path / "out", "--min-distance", "1.5") == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apart" in err and "step 0" in err
    stopped = json.loads((tmp_path / "out" / "md.json").read_text())["stopped"]  # a recorded outcome
    assert stopped["reason"] == "too_close" and stopped["step"] == 0 and stopped["value"] < 1.5


# -- bad inputs


def test_unknown_element_and_pbc_are_one_line_errors(calc, exported, tmp_path, capsys):
    import ase.io

    with pytest.raises(DataError, match=r"element N \(Z=7\) is not supported .*knows H, C, O"):
        evaluate(calc, molecule("NH3"))
    periodic = ethanol()
    periodic.cell, periodic.pbc = [10, 10, 10], True
    with pytest.raises(DataError, match="pbc"):
        evaluate(calc, periodic)
    xyz = tmp_path / "nh3.xyz"
    ase.io.write(xyz, molecule("NH3"))
    assert _md(exported, xyz, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "element N" in err
    assert not (tmp_path / "out").exists()
    assert main(["md", str(tmp_path / "missing"), "--structure", str(xyz), "--steps", "5", "-o",
                 str(tmp_path / "o2")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["md", str(exported), "--structure", str(xyz), "--steps", "0", "-o", str(tmp_path / "o3")]) == 2
    assert "steps" in capsys.readouterr().err


def test_energy_free_models_are_refused(tmp_path, capsys):
    run = tmp_path / "dcm"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"model": {"type": "dcmnet"}, "element_energies_by_Z": {}}))
    with pytest.raises(ConfigError, match="energy model"):
        MMLWFCalculator.from_run(run)
    assert main(["export", str(run), "-o", str(tmp_path / "m.mmlwf")]) == 2
    assert "dcmnet" in capsys.readouterr().err


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 is on in this process")
def test_float64_needs_x64(run_dir):
    with pytest.raises(ConfigError, match="JAX_ENABLE_X64"):
        MMLWFCalculator.from_run(run_dir, dtype="float64")


def test_bad_atoms_object_without_atoms(calc):
    with pytest.raises(DataError, match="no atoms"):
        evaluate(calc, Atoms())


def test_energy_drift_and_min_distance_by_hand():
    from mmlwf.md import energy_drift, min_distance

    t_fs = np.arange(0.0, 1000.0, 0.5)
    etot = -100.0 + 9 * 0.002 * (t_fs / 1000.0) + 1e-4 * np.sin(t_fs)  # 2 meV/atom/ps for 9 atoms
    d = energy_drift(t_fs, etot, 9)
    assert d["drift_meV_per_atom_per_ps"] == pytest.approx(2.0, abs=1e-2)
    assert d["max_abs_dEtot_meV"] == pytest.approx(1000 * np.max(np.abs(etot - etot[0])))
    R = np.array([[0.0, 0, 0], [3.0, 0, 0], [3.0, 0.8, 0], [0, 5, 0]])
    assert min_distance(R) == (pytest.approx(0.8), 1, 2)
    assert min_distance(R[:1])[0] == float("inf")


@pytest.mark.slow  # trains 2 epochs of a small PhysNet on rMD17 ethanol: ~1-2 min on 2 cores
def test_md_stability_benchmark_smoke(tmp_path):
    from .conftest import MLFF

    if not (MLFF / "rmd17_ethanol_train_1000.xyz").exists() or not (MLFF / "rmd17_ethanol_test_1000.xyz").exists():
        pytest.skip(f"needs rMD17 ethanol in {MLFF}")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "md_stability.py"), "--quick",
                          "--workdir", str(tmp_path), "--json", str(tmp_path / "md.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "md.json").read_text())
    assert result["md"]["steps_done"] == 500 and np.isfinite(result["md"]["nve"]["drift_meV_per_atom_per_ps"])
    assert "drift (meV/atom/ps)" in out.stdout and "closest approach" in out.stdout
