"""DCMNet on pyscf-labelled water and methanol conformers against least-squares monopoles.

    python benchmarks/dcmnet_water.py                 # 200 water + 100 methanol, n_dcm 1,2,3
    python benchmarks/dcmnet_water.py --quick         # smoke size (a minute or two)

1. Conformers (deterministic, ``--seed``): water from random displacements of the internal
   coordinates around the equilibrium (bond lengths sigma 0.04 Å, angle sigma 6 degrees,
   random orientation); methanol (ase's CH3OH) from random Cartesian displacements of every
   atom (sigma 0.05 Å) and a random orientation. Written as extxyz.
2. Labels with :func:`mmlwf.label.label_structures` (HF/6-31G* by default, ESP on the
   1.4-2.0 vdW shell; cached per structure under ``OUT/label_cache``, so a rerun is quick).
3. Split (``mmlwf.split``: 70 / 10 / 20 %), DCMNet with ``n_dcm`` = 1, 2, 3 trained through
   the engine (``mmlwf.training.runner.run_training``; run directories ``OUT/run_ndcm<k>_<hash
   of the config>``, reused by a rerun with the same settings; each training capped at
   ``--max-minutes``, the status is recorded).
4. Held-out ESP RMSE (kcal/(mol·e), pooled over the test conformers' points, per molecule
   kind) of each model beside the per-molecule least-squares atom-centred charges
   (:mod:`mmlwf.analysis.esp_fit`, fitted to each test conformer's own ESP), and the RMSE of
   each model on the three water cubes of ``../shared/data/esp`` (another code and level of
   theory; read with the cube reader, Bohr and Hartree/e converted, points on the same
   1.4-2.0 vdW shell as the training data).

Prints a table and writes ``OUT/results.json``. Target: n_dcm >= 2 beats the baseline on
held-out conformers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CUBES = REPO.parent / "shared" / "data" / "esp"
KCAL_PER_V = 23.060548012069496  # 1 V = 1 eV/e = 23.06 kcal/(mol·e)


def water_conformers(n: int, rng: np.random.Generator):
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    out = []
    for _ in range(n):
        r1, r2 = 0.947 + rng.normal(0, 0.04, 2)
        th = np.deg2rad(105.5 + rng.normal(0, 6.0))
        R = np.array([[0.0, 0.0, 0.0], [r1, 0.0, 0.0], [r2 * np.cos(th), r2 * np.sin(th), 0.0]])
        R = Rotation.random(random_state=rng).apply(R - R.mean(0))
        out.append(Atoms("OHH", positions=R))
    return out


def methanol_conformers(n: int, rng: np.random.Generator):
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    ref = molecule("CH3OH")
    out = []
    for _ in range(n):
        a = ref.copy()
        R = a.positions + rng.normal(0, 0.05, a.positions.shape)
        a.positions = Rotation.random(random_state=rng).apply(R - R.mean(0))
        out.append(a)
    return out


def esp_errors(run, ds, indices, batch_size: int = 16):
    """Per-point ``(prediction - reference)`` in V and the structure index of each point."""
    import functools

    import jax

    from mmlwf.batching import BatchLoader
    from mmlwf.models.dcmnet import forward

    loader = BatchLoader(ds, np.asarray(indices), batch_size=batch_size, cutoff=run.pair_cutoff, shuffle=False,
                         prefetch=0)
    step = jax.jit(functools.partial(forward, run.model))
    errs, mols = [], []
    for batch in loader.epoch(0):
        out = jax.device_get(step(run.params, batch))
        gm = np.asarray(batch["grid_mask"], bool)
        errs.append(np.asarray(out["esp"], np.float64)[gm] - np.asarray(batch["esp"], np.float64)[gm])
        mols.append(np.asarray(batch["index"])[np.asarray(batch["grid_graph"])[gm]])
    return np.concatenate(errs), np.concatenate(mols)


def rmse_kcal(err_V) -> float:
    return float(np.sqrt(np.mean(np.square(err_V))) * KCAL_PER_V)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "dcmnet_water",
                    help="work and result folder (default %(default)s; --quick appends _quick)")
    ap.add_argument("--quick", action="store_true", help="smoke size: 40 water + 20 methanol, 10 epochs, no warm-up")
    ap.add_argument("--n-water", type=int, default=200)
    ap.add_argument("--n-methanol", type=int, default=100)
    ap.add_argument("--n-dcm", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--max-minutes", type=float, default=12.0,
                    help="cap on each model's training time (training.max_time_min; default %(default)s)")
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=5e-3)
    ap.add_argument("--method", default="HF")
    ap.add_argument("--basis", default="6-31g*")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_water, args.n_methanol, args.epochs = 40, 20, 10
        args.out = args.out.with_name(args.out.name + "_quick")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    from ase.io import write

    from mmlwf.analysis.esp_fit import fit_dataset
    from mmlwf.analysis.predict import load_run
    from mmlwf.convert import convert
    from mmlwf.esp.points import PointSettings
    from mmlwf.fileio import atomic_write
    from mmlwf.label import label_structures
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split, split_dataset
    from mmlwf.training.runner import run_training

    t0 = time.monotonic()
    rng = np.random.default_rng(args.seed)
    write(out / "water.xyz", water_conformers(args.n_water, rng), format="extxyz")
    write(out / "methanol.xyz", methanol_conformers(args.n_methanol, rng), format="extxyz")
    data = out / "labelled"
    label_structures([out / "water.xyz", out / "methanol.xyz"], data, method=args.method, basis=args.basis,
                     cache_dir=out / "label_cache", threads=1, overwrite=True, progress=sys.stderr.isatty())
    t_label = time.monotonic() - t0
    ds = PackedDataset(data)
    split_dataset(data, out / "split.npz", valid=0.1, test=0.2, seed=args.seed)
    sp = load_split(out / "split.npz", len(ds))
    kinds = {3: "water", 6: "methanol"}
    kind_of = np.array([kinds[int(n)] for n in np.asarray(ds.n_atoms)])
    test = np.sort(sp.test)
    n_points = int(np.sum(np.diff(np.asarray(ds.grid_offsets))[test]))
    print(f"labelled {len(ds)} structures ({args.method}/{args.basis}) in {t_label:.0f} s; test: {len(test)} "
          f"conformers, {n_points} ESP points", flush=True)

    # baseline: per-molecule constrained least-squares atom-centred charges, on the test points
    fit = fit_dataset(ds, test)
    per_point_mol = np.repeat(test, np.diff(fit.grid_offsets))
    esp_ref = ds.gather(test, fields=("esp",))["esp"].astype(np.float64)
    base_err = fit.esp_fit - esp_ref
    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "n_structures": len(ds), "n_test": len(test), "n_test_points": n_points,
               "label_seconds": t_label, "units": "kcal/(mol*e)", "baseline": {}, "dcmnet": {}}
    for kind in ("all", "water", "methanol"):
        sel = np.ones_like(per_point_mol, bool) if kind == "all" else kind_of[per_point_mol] == kind
        results["baseline"][kind] = rmse_kcal(base_err[sel])

    # the reference cubes (another level of theory), on the training data's point rule
    cube_files = sorted(CUBES.glob("h2o-pot*.cube"))
    cube_ds = None
    if cube_files:
        cube_ds = PackedDataset(convert(cube_files, out / "cubes", fmt="cube", points=PointSettings(mode="shell"),
                                        overwrite=True))
        cube_fit = fit_dataset(cube_ds)
        results["cube_baseline"] = {f.name: float(r * KCAL_PER_V) for f, r in zip(cube_files, cube_fit.rmse_V)}

    for n_dcm in args.n_dcm:
        cfg = {"model": {"type": "dcmnet", "n_dcm": n_dcm, "features": args.features, "max_degree": 1,
                         "num_iterations": 2, "cutoff": 4.0, "max_displacement": 0.5},
               "training": {"batch_size": args.batch_size, "learning_rate": args.learning_rate,
                            "schedule": "warmup_cosine", "warmup_steps": 0 if args.quick else 20, "min_learning_rate": 1e-5,
                            "max_epochs": args.epochs, "max_time_min": args.max_minutes, "seed": args.seed,
                            "ema_decay": 0.98,
                            "esp_weight": 1.0, "dipole_weight": 0.0, "charge_weight": 0.0,
                            "early_stopping_patience": None}}
        # one run directory per config: a rerun with the same settings reuses (resumes) it
        tag = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
        run_dir = out / f"run_ndcm{n_dcm}_{tag}"
        t1 = time.monotonic()
        summary = run_training(cfg, data, out / "split.npz", None, run_dir, progress=False)
        t_train = time.monotonic() - t1
        run = load_run(run_dir)
        err, mol = esp_errors(run, ds, test)
        row = {"run_dir": str(run_dir), "train_seconds": t_train, "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
               "status": summary["status"]}
        for kind in ("all", "water", "methanol"):
            sel = np.ones_like(mol, bool) if kind == "all" else kind_of[mol] == kind
            row[kind] = rmse_kcal(err[sel])
        if cube_ds is not None:
            cerr, cmol = esp_errors(run, cube_ds, np.arange(len(cube_ds)), batch_size=1)
            row["cubes"] = {f.name: rmse_kcal(cerr[cmol == k]) for k, f in enumerate(cube_files)}
        results["dcmnet"][str(n_dcm)] = row
        print(f"n_dcm={n_dcm}: test ESP RMSE {row['all']:.3f} kcal/(mol·e) after {summary['epochs']} epochs "
              f"({t_train:.0f} s)", flush=True)

    results["wall_seconds"] = time.monotonic() - t0
    best2 = min((r["all"] for k, r in results["dcmnet"].items() if int(k) >= 2), default=None)
    results["target_met"] = None if best2 is None else bool(best2 < results["baseline"]["all"])
    with atomic_write(out / "results.json") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")

    head = f"{'model':<24}{'all':>8}{'water':>8}{'methanol':>10}"
    if cube_ds is not None:
        head += "".join(f"{f.stem.replace('h2o-pot', 'cube') or 'cube':>14}" for f in cube_files)
    print(f"\nheld-out ESP RMSE, kcal/(mol·e) ({len(test)} test conformers, {n_points} points)")
    print(head)

    def line(name, r, cubes):
        text = f"{name:<24}{r['all']:>8.3f}{r['water']:>8.3f}{r['methanol']:>10.3f}"
        if cube_ds is not None:
            text += "".join(f"{cubes[f.name]:>14.3f}" for f in cube_files)
        print(text)

    line("least-squares monopoles", results["baseline"], results.get("cube_baseline", {}))
    for k, r in results["dcmnet"].items():
        line(f"DCMNet n_dcm={k}", r, r.get("cubes", {}))
    print(f"target (n_dcm >= 2 beats the baseline): {results['target_met']}; results in {out / 'results.json'}; "
          f"{results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
