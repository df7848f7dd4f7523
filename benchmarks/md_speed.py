"""MD speed of the two engines of ``mmlwf md``: JAX-MD (compiled chunks) against ASE (one step per
Python call), same model, same start, NVE, on aspirin (21 atoms) and a water cluster (~500 atoms).

    python benchmarks/md_speed.py                        # train 3 min on aspirin, 10 000 steps each
    python benchmarks/md_speed.py --run RUN_OR_MODEL     # reuse a trained run or exported file (H, C, O)
    python benchmarks/md_speed.py --steps 200 --ase-steps 50   # a short run
    python benchmarks/md_speed.py --systems aspirin             # 10 000 steps of aspirin only

The model: ``--run``, else PhysNet trained for ``--minutes`` on ``rmd17_aspirin_train.xyz``
(``../shared/data/mlff``; elements H, C, O, so it also covers water; its water is out of
distribution, which matters for the drift, not for the speed). The water cluster: molecules on a
3.1 Å cubic grid, randomly oriented, those within a sphere (``--waters`` molecules). Prints steps/s
(after compilation; JAX-MD's compile time separately) and the NVE energy drift (slope of
Etot/atom, meV/atom/ps) of both engines, JAX-MD's also over the ASE run's steps (drifts of runs of
different lengths do not compare). ``--ase-steps`` (default ``--steps``) shortens the ASE runs,
which take ~0.3 s a step for 500 atoms on a 2-core CPU. Writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mlff"


def train(work: Path, minutes: float) -> Path:
    """PhysNet trained for ``minutes`` on the aspirin training file; the run directory."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats
    from mmlwf.training.runner import run_training

    ds = work / "aspirin"
    convert([DATA / "rmd17_aspirin_train.xyz"], ds)
    split_dataset(ds, work / "split.npz", valid=50, test=0, seed=0)
    write_stats(compute_stats(ds, work / "split.npz"), work / "stats.json")
    config = {"model": {"type": "physnet", "cutoff": 5.0, "features": 32, "max_degree": 0, "num_iterations": 2},
              "training": {"batch_size": 16, "max_epochs": 1_000_000, "ema_decay": 0.99, "seed": 0,
                           "max_time_min": minutes}}
    t0 = time.perf_counter()
    run_training(config, ds, work / "split.npz", work / "stats.json", work / "run", progress=False)
    print(f"trained {minutes:g} min ({(time.perf_counter() - t0) / 60:.1f} min with setup)", flush=True)
    return work / "run"


def water_cluster(n_waters: int, seed: int = 0):
    """``n_waters`` randomly oriented waters on a 3.1 Å grid, the ones nearest the centre."""
    from ase import Atoms
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    side = int(np.ceil((n_waters * 6 / np.pi) ** (1 / 3))) + 2
    g = (np.indices((side,) * 3).reshape(3, -1).T - (side - 1) / 2) * 3.1
    centres = g[np.argsort(np.linalg.norm(g, axis=1))[:n_waters]]
    water, rng = molecule("H2O"), np.random.default_rng(seed)
    R = water.positions - water.get_center_of_mass()
    cluster = Atoms()
    for c in centres:
        cluster += Atoms(water.numbers, positions=Rotation.random(random_state=rng).apply(R) + c)
    return cluster


def bench(model, atoms, steps: int, ase_steps: int, work: Path, label: str) -> dict:
    from mmlwf.md import MDSettings, load_calculator, load_trained, run_md, run_md_jax

    out = {}
    settings = MDSettings(steps=steps, dt_fs=0.5, temperature_K=300.0, min_distance_A=0.0,
                          log_every=10, traj_every=max(steps // 10, 1))
    t0 = time.perf_counter()
    [j] = run_md_jax(load_trained(model), [atoms], settings, [work / f"{label}-jax"], overwrite=True)
    out["jax-md"] = {"steps": j["steps_done"], "steps_per_s": j["steps_per_s"], "compile_s": j["compile_s"],
                     "total_s": time.perf_counter() - t0, "drift": j["nve"]["drift_meV_per_atom_per_ps"],
                     "chunk_reruns": j["neighbour_lists"]["chunk_reruns"]}
    settings = MDSettings(**{**settings.__dict__, "steps": ase_steps, "traj_every": max(ase_steps // 10, 1)})
    t0 = time.perf_counter()
    a = run_md(load_calculator(model), atoms, settings, work / f"{label}-ase", overwrite=True)
    out["ase"] = {"steps": a["steps_done"], "steps_per_s": a["steps_per_s"], "compile_s": a["first_evaluation_s"],
                  "total_s": time.perf_counter() - t0, "drift": a["nve"]["drift_meV_per_atom_per_ps"]}
    # JAX-MD's drift over the ASE run's steps: drifts of runs of different lengths do not compare
    from mmlwf.md import energy_drift

    log = np.genfromtxt(work / f"{label}-jax" / "energy.csv", delimiter=",", names=True)
    first = log["step"] <= ase_steps
    out["jax-md"]["drift_over_ase_steps"] = energy_drift(log["time_fs"][first], log["Etot_eV"][first],
                                                         len(atoms))["drift_meV_per_atom_per_ps"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="trained run directory or exported model (H, C, O)")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time without --run (default %(default)s)")
    ap.add_argument("--steps", type=int, default=10_000, help="NVE steps of the JAX-MD runs (default %(default)s)")
    ap.add_argument("--ase-steps", type=int, help="NVE steps of the ASE runs (default: --steps)")
    ap.add_argument("--waters", type=int, default=167, help="molecules of the water cluster (default %(default)s)")
    ap.add_argument("--systems", default="aspirin,water", help="comma-separated: aspirin, water (default %(default)s)")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "benchmarks" / "md_speed.json",
                    help="write the result here (default %(default)s)")
    args = ap.parse_args()
    if not args.run and not (DATA / "rmd17_aspirin_train.xyz").exists():
        print(f"needs {DATA / 'rmd17_aspirin_train.xyz'} or --run", file=sys.stderr)
        return 2
    from mmlwf.md import read_structure

    with tempfile.TemporaryDirectory(prefix="mmlwf-md-speed-") as tmp:
        work = Path(tmp)
        model = args.run or train(work, args.minutes)
        wanted = set(args.systems.split(","))
        systems = {"aspirin": read_structure(DATA / "rmd17_aspirin_test.xyz", 0)
                   if "aspirin" in wanted and (DATA / "rmd17_aspirin_test.xyz").exists() else None,
                   "water": water_cluster(args.waters) if "water" in wanted else None}
        result = {"steps": args.steps, "ase_steps": args.ase_steps or args.steps, "model": str(args.run or "trained")}
        for name, atoms in systems.items():
            if atoms is None:
                continue
            result[name] = {"n_atoms": len(atoms), **bench(model, atoms, args.steps, args.ase_steps or args.steps,
                                                             work, name)}
    print(f"{'system':<10}{'atoms':>6}  {'engine':<7}{'steps':>7}{'steps/s':>10}{'compile s':>11}"
          f"{'drift meV/atom/ps':>19}{'over the ASE steps':>20}")
    for name in ("aspirin", "water"):
        if name not in result:
            continue
        for engine in ("jax-md", "ase"):
            r = result[name][engine]
            print(f"{name:<10}{result[name]['n_atoms']:>6}  {engine:<7}{r['steps']:>7}{r['steps_per_s']:>10.1f}"
                  f"{r['compile_s']:>11.1f}{r['drift']:>19.4g}{r.get('drift_over_ase_steps', r['drift']):>20.4g}")
        print(f"{'':<16}JAX-MD / ASE: {result[name]['jax-md']['steps_per_s'] / result[name]['ase']['steps_per_s']:.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
