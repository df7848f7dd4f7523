"""PhysNet with and without its physics on the demo molecules, and the water dimer's long-range tail.

    python benchmarks/physics_demo.py                    # 40 conformers per molecule, 3 min per model
    python benchmarks/physics_demo.py --minutes 10       # longer training, same comparison
    python benchmarks/physics_demo.py --smoke            # smoke size (under two minutes)

1. Demo data as the workflow makes it (:func:`mmlwf.demo.generate_demo_data` with the ``demo:``
   settings of the repository's ``config.yaml``: GFN2-xTB through tblite, energies, forces,
   charges and dipoles; the reference includes dispersion, D4 in GFN2-xTB), converted with the
   settings of ``datasets.demo`` that this checkout's converter knows, split as the config's
   ``splits.default``, element energies from the teacher's isolated atoms where this checkout's
   demo makes them (else its default), all through the library API.
2. The demo experiment's PhysNet (``experiments.demo_physnet`` of ``config.yaml``; ``--model-json``
   and ``--training-json`` add or replace keys) trained twice for the same wall time
   (``training.max_time_min = --minutes``): physics on (``charges``, ``coulomb`` and, where this
   checkout's ``PhysNetSettings`` has it, ``dispersion``: true) and physics off (all false).
   Test energy MAE (meV), force MAE (meV/Å, per component) and dipole MAE (per component,
   e·Å and Debye; a model without charges predicts no dipole).
3. Water dimer (ase's S22 geometry, hydrogen-bonded) dissociated by translating the second
   monomer rigidly along the O-O axis, O…O from 2 to 15 Å: interaction energy
   E(dimer) - E(A) - E(B) of the teacher (GFN2-xTB, neutral singlet) and of each trained model
   (:class:`mmlwf.calculator.MMLWFCalculator` on the run directory). Prints the table, the RMS
   deviation from the teacher beyond the message-passing cutoff, and writes
   ``OUT/water_dimer.png`` (cutoff marked) and ``OUT/results.json``.

Expected: with electrostatics and dispersion the model follows the teacher's tail; without them
its interaction energy is exactly zero beyond the cutoff. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the physics switches of PhysNet this benchmark turns on or off (those the settings know)
PHYSICS = ("charges", "coulomb", "dispersion")


def workflow_config() -> dict:
    """The repository's embedded workflow config (``config.yaml``)."""
    import yaml

    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)


def physics_switches(on: bool) -> dict[str, bool]:
    """``{switch: on}`` for the switches of :data:`PHYSICS` that ``PhysNetSettings`` declares."""
    from mmlwf.settings.models import PhysNetSettings

    return {k: on for k in PHYSICS if k in PhysNetSettings.model_fields}


def demo_dataset(work: Path, demo: dict, dataset: dict) -> tuple[Path, Path | None]:
    """The demo data of ``demo`` (generate_demo_data's arguments) converted under ``work`` with
    the conversion settings of the workflow's dataset entry ``dataset`` (those this checkout's
    converter knows: e.g. that the reference includes dispersion, where its dipoles are taken
    about). Returns the packed dataset and, where this checkout's demo makes them, the file of
    the teacher's isolated atoms."""
    from mmlwf.convert import convert
    from mmlwf.demo import generate_demo_data
    from mmlwf.steps.data import CONVERT_SETTINGS, convert_options

    tag = hashlib.sha256(json.dumps(demo, sort_keys=True).encode()).hexdigest()[:10]
    xyz = work / f"demo_{tag}.extxyz"
    atoms = work / f"demo_{tag}_isolated_atoms.extxyz"
    makes_atoms = "isolated_atoms" in inspect.signature(generate_demo_data).parameters
    if not xyz.exists() or (makes_atoms and not atoms.exists()):
        t0 = time.perf_counter()
        generate_demo_data(xyz, **demo, **({"isolated_atoms": atoms} if makes_atoms else {}))
        print(f"demo data: {xyz.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    settings = {k: v for k, v in dataset.items() if k in CONVERT_SETTINGS}
    ignored = sorted(set(dataset) - set(settings) - {"sources", "split", "stats"})
    print(f"conversion settings: {json.dumps(settings)}" + (f" (not this checkout's: {', '.join(ignored)})"
                                                            if ignored else ""))
    packed = work / f"demo_{tag}"
    convert([xyz], packed, convert_options(settings), overwrite=True)
    return packed, atoms if makes_atoms else None


def train_model(name: str, model: dict, training: dict, packed: Path, split: Path, stats: Path, work: Path,
                minutes: float) -> Path:
    """A fresh run ``work/runs/<name>`` trained for ``minutes`` of wall time."""
    from mmlwf.training.runner import run_training

    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    config = {"model": model, "training": {**training, "max_epochs": 1_000_000, "early_stopping_patience": 1_000_000,
                                           "max_time_min": minutes}}
    t0 = time.perf_counter()
    summary = run_training(config, packed, split, stats, run_dir, progress=False)
    if summary["best_epoch"] is None:  # the budget ended before the first epoch (compilation): finish it
        print(f"{name}: no epoch within {minutes:g} min; finishing epoch {summary['epochs'] + 1} beyond the budget")
        config["training"] |= {"max_time_min": None, "max_epochs": summary["epochs"] + 1}
        summary = run_training(config, packed, split, stats, run_dir, progress=False)
    print(f"{name}: {summary['epochs']} epochs in {time.perf_counter() - t0:.0f} s (best epoch "
          f"{summary['best_epoch']}); model {json.dumps({k: v for k, v in model.items() if k != 'type'})}", flush=True)
    return run_dir


def test_errors(run_dir: Path, packed: Path, split: Path) -> dict:
    """Test-set energy, force and dipole MAE of a run (meV, meV/Å, e·Å, Debye)."""
    from ase.units import Debye

    from mmlwf.analysis import load_run, predict
    from mmlwf.analysis.evaluate import compute_metrics, subset_indices
    from mmlwf.packed import PackedDataset

    ds = PackedDataset(packed)
    m = compute_metrics(predict(load_run(run_dir), ds, subset_indices(split, "test", len(ds))))
    out = {"energy_mae_meV": 1000 * m["energy_mae_eV"], "forces_mae_meV_per_A": 1000 * m["forces_mae_eV_per_A"]}
    if "dipole_mae_eA" in m:
        out |= {"dipole_mae_eA": m["dipole_mae_eA"], "dipole_mae_D": m["dipole_mae_eA"] / Debye}
    return out


def water_dimer_scan(distances: np.ndarray):
    """``(dimer, monomer A, monomer B)`` per O…O distance: S22's water dimer with the second
    monomer (atoms 3-5) translated rigidly along the O-O axis."""
    from ase.collections import s22

    ref = s22["Water_dimer"]
    ref.pbc = False
    axis = ref.positions[3] - ref.positions[0]
    d0 = float(np.linalg.norm(axis))
    axis /= d0
    out = []
    for d in distances:
        dimer = ref.copy()
        dimer.positions[3:] += (float(d) - d0) * axis
        out.append((dimer, dimer[:3], dimer[3:]))
    return out


def interaction_energies(systems, make_calc) -> np.ndarray:
    """E(dimer) - E(A) - E(B) in meV for each system, each of the three with its own
    calculator from ``make_calc()``."""
    calcs = [make_calc() for _ in range(3)]
    out = []
    for parts in systems:
        energies = []
        for atoms, calc in zip(parts, calcs):
            atoms = atoms.copy()
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
        out.append(1000.0 * (energies[0] - energies[1] - energies[2]))
    return np.asarray(out)


def plot(path: Path, distances, curves: dict[str, np.ndarray], cutoff: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    tail = distances > cutoff
    for ax, sel, title in ((axes[0], slice(None), "O…O 2-15 Å"), (axes[1], tail, "beyond the cutoff")):
        for name, e in curves.items():
            ax.plot(distances[sel], e[sel], "o-" if name == "teacher" else ".-", label=name, ms=3)
        ax.axvline(cutoff, color="grey", ls="--", lw=1, label=f"message-passing cutoff {cutoff:g} Å")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xlabel("O…O distance (Å)")
        ax.set_ylabel("interaction energy (meV)")
        ax.set_title(title)
    lo = min(float(np.min(e[tail])) for e in curves.values()) if tail.any() else -1.0
    hi = max(float(np.max(e[tail])) for e in curves.values()) if tail.any() else 1.0
    pad = 0.1 * max(hi - lo, 1e-3)
    axes[1].set_ylim(lo - pad, hi + pad)
    axes[0].set_ylim(max(axes[0].get_ylim()[0], -600.0), min(axes[0].get_ylim()[1], 600.0))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "physics_demo",
                    help="work and result folder (default %(default)s; --smoke appends _smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="smoke size: 8 conformers per molecule, 16 features, 1 iteration, 0.4 min per model, "
                         "8 distances")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time per model (default %(default)s)")
    ap.add_argument("--n-per-molecule", type=int, default=None, help="demo conformers per molecule (default: config.yaml's)")
    ap.add_argument("--points", type=int, default=40, help="O…O distances from 2 to 15 Å (default %(default)s)")
    ap.add_argument("--model-json", default="{}", help="model keys added to the demo experiment's (JSON)")
    ap.add_argument("--training-json", default="{}", help="training keys added to the demo experiment's (JSON)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_per_molecule, args.minutes, args.points = 8, 0.4, 8
        args.out = args.out.with_name(args.out.name + "_smoke")
    work = args.out
    work.mkdir(parents=True, exist_ok=True)

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.demo import make_teacher
    from mmlwf.split import split_dataset
    from transfer_totals import make_stats  # benchmarks/ is on sys.path as the script's folder

    cfg = workflow_config()
    demo = dict(cfg["demo"])
    if args.n_per_molecule:
        demo["n_per_molecule"] = args.n_per_molecule
    experiment = cfg["experiments"]["demo_physnet"]
    smoke_model = {"features": 16, "num_iterations": 1} if args.smoke else {}
    base_model = {**experiment["model"], **smoke_model, **json.loads(args.model_json)}
    training = {**experiment.get("training", {}), **json.loads(args.training_json)}

    packed, atoms = demo_dataset(work, demo, cfg["datasets"]["demo"])
    split = work / "split.npz"
    split_dataset(packed, split, **(cfg.get("splits", {}).get("default") or {}))
    how = make_stats(None if atoms is None else str(atoms), packed, split, work / "stats.json")
    print(f"element energies: {how}")

    on, off = physics_switches(True), physics_switches(False)
    missing = [k for k in PHYSICS if k not in on]
    print("physics on: " + ", ".join(on) + (f" (this checkout has no {', '.join(missing)} setting)" if missing else ""))
    runs = {}
    for name, switches in (("physics_on", on), ("physics_off", off)):
        runs[name] = train_model(name, {**base_model, **switches}, training, packed, split, work / "stats.json", work,
                                 args.minutes)

    print(f"\ntest errors after {args.minutes:g} min of training each:")
    print(f"{'model':12s} {'E MAE meV':>10s} {'F MAE meV/Å':>12s} {'D MAE e·Å':>10s} {'D MAE D':>8s}")
    errors = {}
    for name, run_dir in runs.items():
        e = errors[name] = test_errors(run_dir, packed, split)
        dip = (f"{e['dipole_mae_eA']:10.4f} {e['dipole_mae_D']:8.4f}" if "dipole_mae_eA" in e
               else f"{'-':>10s} {'-':>8s}")
        print(f"{name:12s} {e['energy_mae_meV']:10.2f} {e['forces_mae_meV_per_A']:12.2f} {dip}")

    distances = np.linspace(2.0, 15.0, args.points)
    systems = water_dimer_scan(distances)

    def teacher():
        calc = make_teacher(demo.get("teacher", "gfn2-xtb"))
        if "charge" in calc.parameters:  # tblite: neutral singlet
            calc.set(charge=0.0, multiplicity=1)
        return calc

    curves = {"teacher": interaction_energies(systems, teacher)}
    cutoffs = {}
    for name, run_dir in runs.items():
        curves[name] = interaction_energies(systems, lambda r=run_dir: MMLWFCalculator.from_run(r))
        cutoffs[name] = float(json.loads((run_dir / "model.json").read_text())["model"]["cutoff"])
    cutoff = max(cutoffs.values())

    print(f"\nwater dimer interaction energy (meV), message-passing cutoff {cutoff:g} Å:")
    print(f"{'O…O Å':>7s} " + " ".join(f"{n:>12s}" for n in curves))
    for k, d in enumerate(distances):
        print(f"{d:7.2f} " + " ".join(f"{e[k]:12.3f}" for e in curves.values()) + ("  *" if d > cutoff else ""))
    tail = distances > cutoff
    rms_tail = {n: float(np.sqrt(np.mean((curves[n][tail] - curves["teacher"][tail]) ** 2))) if tail.any() else None
                for n in runs}
    teacher_tail = float(np.sqrt(np.mean(curves["teacher"][tail] ** 2))) if tail.any() else None
    print(f"(* beyond the cutoff) RMS deviation from the teacher there (meV): "
          + ", ".join(f"{n} {v:.3f}" for n, v in rms_tail.items() if v is not None)
          + (f"; the teacher's own RMS there {teacher_tail:.3f}" if teacher_tail is not None else ""))
    png = work / "water_dimer.png"
    plot(png, distances, curves, cutoff)
    print(f"plot: {png}")
    result = {"benchmark": "physics_demo", "minutes_per_model": args.minutes, "demo": demo, "model": base_model,
              "physics_on": on, "test": errors, "cutoff_A": cutoff, "distances_A": distances.tolist(),
              "interaction_meV": {n: e.tolist() for n, e in curves.items()}, "rms_beyond_cutoff_meV": rms_tail,
              "teacher_rms_beyond_cutoff_meV": teacher_tail, "plot": str(png)}
    (work / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("distances_A", "interaction_meV")}))
    return 0


if __name__ == "__main__":
    from mmlwf.errors import ConfigError, DataError

    try:
        sys.exit(main())
    except (ConfigError, DataError) as exc:  # a setting this checkout does not know, bad data: one line
        sys.exit(f"physics_demo: {exc}")
