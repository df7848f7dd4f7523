"""MD stability of a PhysNet trained on revised MD17 ethanol: NVE energy drift and speed.

    python benchmarks/md_stability.py                      # train 5 min, then 10 000 NVE steps
    python benchmarks/md_stability.py --run RUN_DIR         # reuse a trained run (or exported file)
    python benchmarks/md_stability.py --quick               # smoke size: 2 epochs, 500 steps

Trains PhysNet (CPU, ``--minutes`` of training, plateau schedule, EMA 0.99) on
``rmd17_ethanol_train_1000.xyz`` (950 train / 50 valid), evaluates it on the first
``--n-test`` structures of the disjoint ``rmd17_ethanol_test_1000.xyz``, and runs NVE
(velocity Verlet, ``--dt-fs`` 0.5 fs) from test structure ``--index`` with Maxwell-Boltzmann
velocities at 300 K through :class:`mmlwf.calculator.MMLWFCalculator` (float32 network,
float64 reference energies). Reports the total-energy drift (slope of a linear fit of
Etot/n_atoms against time, meV/atom/ps), max |Etot - Etot(0)|, MD steps per second (after
the first, compiling evaluation) and the closest approach of two atoms. Targets: no pair
closer than 0.7 Å, |drift| < 1 meV/atom/ps. Prints a table; writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mlff"
MIN_DISTANCE_TARGET_A = 0.7
DRIFT_TARGET = 1.0  # meV/atom/ps


def train(work: Path, args) -> Path:
    """Convert, split, stats and train into ``work/run``; return the run directory."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats
    from mmlwf.training.runner import run_training

    ds = work / "train"
    if not ds.exists():
        convert([DATA / "rmd17_ethanol_train_1000.xyz"], ds)
    split_dataset(ds, work / "split.npz", valid=50, test=0, seed=0)
    write_stats(compute_stats(ds, work / "split.npz"), work / "stats.json")
    config = {
        "model": {"type": "physnet", "cutoff": 5.0, "features": args.features, "max_degree": 0,
                  "num_iterations": args.iterations},
        "training": {"batch_size": args.batch_size, "learning_rate": args.learning_rate,
                     "max_epochs": args.epochs or 1_000_000, "schedule": "plateau", "ema_decay": 0.99, "seed": 0,
                     "early_stopping_patience": 1_000_000, "max_time_min": args.minutes},
    }
    t0 = time.perf_counter()
    summary = run_training(config, ds, work / "split.npz", work / "stats.json", work / "run", progress=False)
    if summary["best_epoch"] is None:
        raise SystemExit(f"no epoch finished within {args.minutes} min of training: give more --minutes")
    print(f"trained {summary['epochs']} epochs in {(time.perf_counter() - t0) / 60:.1f} min "
          f"(best epoch {summary['best_epoch']})", flush=True)
    return work / "run"


def errors_on_test_set(calc, n: int) -> dict:
    """Energy and force MAE (meV, meV/Å) of the calculator on the first ``n`` test structures."""
    import ase.io
    import numpy as np

    frames = ase.io.read(DATA / "rmd17_ethanol_test_1000.xyz", index=f":{n}")
    dE, dF = [], []
    for atoms in frames:
        E, F = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = calc
        dE.append(atoms.get_potential_energy() - E)
        dF.append(atoms.get_forces() - F)
    return {"n_test": len(frames), "energy_mae_meV": 1000 * float(np.mean(np.abs(dE))),
            "forces_mae_meV_per_A": 1000 * float(np.mean(np.abs(np.concatenate(dF))))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained run directory or exported model file (skips training)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget in minutes (default %(default)s)")
    ap.add_argument("--epochs", type=int, help="stop after this many epochs (default: only the time budget)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=10_000, help="NVE steps (default %(default)s)")
    ap.add_argument("--dt-fs", type=float, default=0.5)
    ap.add_argument("--temperature-K", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", type=int, default=0, help="starting structure in the test file (default %(default)s)")
    ap.add_argument("--n-test", type=int, default=200, help="test structures for the error line (default %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: 2 epochs of 16 features, 2 iterations; 500 steps")
    ap.add_argument("--workdir", type=Path, help="keep data, run and MD output here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "benchmarks" / "md_stability.json",
                    help="write the result here (default %(default)s)")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.epochs, args.features, args.iterations, args.steps, args.n_test = None, 2, 16, 2, 500, 20
    for name in ("rmd17_ethanol_train_1000.xyz", "rmd17_ethanol_test_1000.xyz"):
        if not (DATA / name).exists():
            print(f"needs {DATA / name}", file=sys.stderr)
            return 2

    from mmlwf.fileio import atomic_write
    from mmlwf.md import MDSettings, load_calculator, read_structure, run_md

    with tempfile.TemporaryDirectory(prefix="mmlwf-md-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = args.run or train(work, args)
        calc = load_calculator(run)
        errors = errors_on_test_set(calc, args.n_test)
        atoms = read_structure(DATA / "rmd17_ethanol_test_1000.xyz", args.index)
        settings = MDSettings(steps=args.steps, dt_fs=args.dt_fs, ensemble="nve", temperature_K=args.temperature_K,
                              seed=args.seed, traj_every=100, min_distance_A=0.0)  # measured, not aborted
        md = run_md(calc, atoms, settings, work / "md", overwrite=True)

    nve, closest = md["nve"], md["closest_approach"]["min_distance_A"]
    ok_dist = closest >= MIN_DISTANCE_TARGET_A
    ok_drift = abs(nve["drift_meV_per_atom_per_ps"]) < DRIFT_TARGET
    rows = [
        ("model", str(run) if args.run else f"trained {args.minutes or '-'} min / {args.epochs or '-'} epochs, "
                                            f"{args.features} features, {args.iterations} iterations"),
        ("test energy MAE (meV)", f"{errors['energy_mae_meV']:.2f}  ({errors['n_test']} structures)"),
        ("test force MAE (meV/Å)", f"{errors['forces_mae_meV_per_A']:.2f}"),
        ("NVE steps x dt", f"{md['steps_done']} x {args.dt_fs} fs = {md['simulated_ps']:g} ps"),
        ("mean T (K)", f"{md['mean_T_K']:.0f}"),
        ("drift (meV/atom/ps)", (f"{nve['drift_meV_per_atom_per_ps']:+.4f}   "
                                 f"target |x| < {DRIFT_TARGET}: {'PASS' if ok_drift else 'FAIL'}")),
        ("max |Etot - Etot0| (meV)", f"{nve['max_abs_dEtot_meV']:.3f}  ({nve['max_abs_dEtot_meV_per_atom']:.3f} per atom)"),
        ("closest approach (Å)", f"{closest:.3f}   target >= {MIN_DISTANCE_TARGET_A}: {'PASS' if ok_dist else 'FAIL'}"),
        ("MD steps per second", f"{md['steps_per_s']:.0f}  (wall {md['md_wall_s']:.0f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:>{width}}  {value}")
    result = {"benchmark": "md_stability", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "test_errors": errors, "md": md, "pass": ok_dist and ok_drift}
    with atomic_write(args.json) as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
