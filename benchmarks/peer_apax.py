"""mmlwf (PhysNet) against apax 0.14.0 (GMNN) on revised MD17: the same data, the same split,
the same cores and the same training time, one after the other.

    python benchmarks/peer_apax.py --molecule ethanol --minutes 5
    python benchmarks/peer_apax.py --molecule aspirin --minutes 10
    python benchmarks/peer_apax.py --smoke          # ethanol, 0.5 minutes each, PhysNet with 16 features

Data (``../shared/data/mlff``): the first 1000 frames of the molecule's rMD17 training file, split
950 train / 50 valid by ``mmlwf.split`` (seed 0); both tools train on the same 950 and validate
on the same 50, and are tested on every frame of the disjoint test file.

mmlwf: PhysNet with the project's default settings, what an experiment gets without asking
(``benchmarks/accuracy_rmd17.py``'s functions train and test it here), trained with
``training.max_time_min`` = ``--minutes``.

apax: installed on first use into a virtual environment of its own (``--apax-venv``; pip,
``apax==0.14.0`` with TensorFlow; about 3 GB), configured with its documented settings (see
``_peer_apax.apax_config``; the config is printed) and a linear learning-rate decay over its
epochs. apax has no time limit, so its epochs are sized to the budget: a short calibration run
(not counted) measures its steady epoch time and its fixed start-up cost, and ``n_epochs`` is
what fits ``--minutes`` of ``apax train`` wall time. Its best checkpoint (validation loss) is
tested through its ASE calculator.

Both are tested the same way: energy MAE per structure (meV), force MAE per component (meV/Å).
structures/s: ``steady`` is training structures per second over the epochs after the first
(compilation excluded; each epoch's validation included, for both tools); ``overall`` is
``epochs x n_train / training wall time`` (start-up and compilation included). Both tools run
in this process's CPU set (``--cores``, inherited by apax's subprocesses). Printed: a table of
both and their ratios, the settings of both, and one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _peer_apax as apax
from accuracy_rmd17 import DATA, SMOKE_MODEL, physnet_config, prepare, train_and_test

FILES = {"ethanol": ("rmd17_ethanol_train_1000.xyz", "rmd17_ethanol_test_1000.xyz"),
         "aspirin": ("rmd17_aspirin_train.xyz", "rmd17_aspirin_test.xyz")}
N_FRAMES = 1000  # of the training file: 950 train + 50 valid, as in accuracy_rmd17.py


def xyz_frames(path: Path) -> list[list[str]]:
    """The frames of an extended-XYZ file, each its lines as written (count, comment, atoms)."""
    lines = path.read_text().splitlines(keepends=True)
    frames, i = [], 0
    while i < len(lines) and lines[i].strip():
        n = int(lines[i])
        frames.append(lines[i:i + n + 2])
        i += n + 2
    return frames


def write_frames(frames: list[list[str]], indices, out: Path) -> Path:
    out.write_text("".join(line for k in indices for line in frames[int(k)]))
    return out


def reference(frames_xyz: Path) -> dict:
    """Reference energies (eV), forces (eV/Å) and atom counts of every frame (ASE reader)."""
    import ase.io

    frames = ase.io.read(frames_xyz, ":")
    return {"E_ref": np.array([a.get_potential_energy() for a in frames]),
            "F_ref": np.concatenate([a.get_forces() for a in frames]),
            "n_atoms": np.array([len(a) for a in frames])}


def mmlwf_speed(run_dir: Path, n_train: int, train_s: float) -> dict:
    """structures/s of an mmlwf run from its history (epoch ends in ``wall_time_s``)."""
    from mmlwf.rundir import RunDir

    with open(RunDir(run_dir).history_csv, newline="") as fh:
        wall = [float(r["wall_time_s"]) for r in csv.DictReader(fh)]
    steady = n_train * (len(wall) - 1) / (wall[-1] - wall[0]) if len(wall) > 1 else None
    return {"epochs": len(wall), "steady_structures_per_s": steady,
            "overall_structures_per_s": n_train * len(wall) / train_s}


def apax_speed(run: dict, n_train: int) -> dict:
    steady = n_train * (len(run["epoch_s"]) - 1) / sum(run["epoch_s"][1:]) if len(run["epoch_s"]) > 1 else None
    return {"epochs": len(run["epoch_s"]), "steady_structures_per_s": steady,
            "overall_structures_per_s": n_train * len(run["epoch_s"]) / run["wall_s"]}


def errors(pred: dict) -> dict:
    from mmlwf.analysis import energy_force_metrics

    m = energy_force_metrics(pred)
    return {"energy_mae_meV": 1000 * m["energy_mae_eV"], "forces_mae_meV_per_A": 1000 * m["forces_mae_eV_per_A"],
            "n_test": m["n_structures"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecule", choices=sorted(FILES), default="ethanol")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time of each tool (default %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="0.5 minutes each, PhysNet with 16 features")
    ap.add_argument("--apax-venv", type=Path, default=apax.DEFAULT_VENV,
                    help="apax's virtual environment, made on first use (default %(default)s)")
    ap.add_argument("--cores", default=None, help="CPU cores for both, e.g. 0,1 (default: this process's set)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    model, cal_epochs = {}, apax.CALIBRATION_EPOCHS
    if args.smoke:
        args.minutes, model, cal_epochs = 0.5, SMOKE_MODEL, 2
    train_src, test_xyz = (DATA / f for f in FILES[args.molecule])
    if not (train_src.exists() and test_xyz.exists()):
        print(f"needs {train_src} and {test_xyz}", file=sys.stderr)
        return 2
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    cores = sorted(os.sched_getaffinity(0))
    venv = args.apax_venv.expanduser()
    versions = apax.ensure_venv(venv)

    import importlib.metadata

    import mmlwf

    ours_versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "numpy")}
    print(f"mmlwf {mmlwf.__version__} from {Path(mmlwf.__file__).parent} "
          f"({', '.join(f'{k} {v}' for k, v in ours_versions.items())}); apax {versions['apax']} in "
          f"{venv} ({', '.join(f'{k} {v}' for k, v in versions.items() if k != 'apax')}); "
          f"cores {cores}", flush=True)
    budget_s = 60 * args.minutes
    with tempfile.TemporaryDirectory(prefix="mmlwf-peer-") as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        frames = xyz_frames(train_src)[:N_FRAMES]
        data = prepare(work, write_frames(frames, range(len(frames)), work / "frames.xyz"), test_xyz)
        split = data["split"]
        n_train, n_valid = len(split.train), len(split.valid)
        print(f"{args.molecule}: {n_train} train / {n_valid} valid of the first {len(frames)} frames of "
              f"{train_src.name}, tested on {test_xyz.name}; element energies: {data['element_energies']}", flush=True)

        config = physnet_config(model)
        print(f"\nmmlwf: {args.minutes:g} min, config {json.dumps(config)}", flush=True)
        t0, load_before = time.perf_counter(), os.getloadavg()[0]
        curve = train_and_test(config, data, work / "mmlwf_run", args.minutes, 1)
        ours = {**curve[-1], **mmlwf_speed(work / "mmlwf_run", n_train, 60 * curve[-1]["minutes"]),
                "train_wall_s": 60 * curve[-1]["minutes"], "total_wall_s": time.perf_counter() - t0,
                "load_avg_before_after": [load_before, os.getloadavg()[0]]}

        train_xyz = write_frames(frames, split.train, work / "apax_train.xyz")
        valid_xyz = write_frames(frames, split.valid, work / "apax_valid.xyz")
        cal_config = apax.apax_config(train_xyz, valid_xyz, n_train, n_valid, cal_epochs, work / "apax_cal")
        print(f"\napax: calibration run of {cal_epochs} epochs", flush=True)
        cal = apax.train(venv, cal_config, work / "apax_cal")
        n_epochs, epoch_s, fixed_s = apax.epochs_for(budget_s, cal, cal_epochs)
        print(f"apax: steady epoch {epoch_s:.2f} s, fixed cost {fixed_s:.1f} s (calibration wall {cal['wall_s']:.1f} s)"
              f" -> n_epochs {n_epochs} for {args.minutes:g} min", flush=True)
        apax_cfg = apax.apax_config(train_xyz, valid_xyz, n_train, n_valid, n_epochs, work / "apax_models")
        print(f"apax: config {json.dumps(apax_cfg)}", flush=True)
        t0, load_before = time.perf_counter(), os.getloadavg()[0]
        run = apax.train(venv, apax_cfg, work / "apax_run")
        pred = apax.predict(venv, run["model_dir"], test_xyz, work / "apax_test.npz")
        ref = reference(test_xyz)
        theirs = {**errors({**ref, "E_pred": pred["E"], "F_pred": pred["F"]}), **apax_speed(run, n_train),
                  "train_wall_s": run["wall_s"], "total_wall_s": time.perf_counter() - t0,
                  "load_avg_before_after": [load_before, os.getloadavg()[0]]}

    rows = [("test energy MAE (meV)", "energy_mae_meV", "{:.2f}"),
            ("test force MAE (meV/Å)", "forces_mae_meV_per_A", "{:.2f}"),
            ("epochs", "epochs", "{:d}"),
            ("training wall time (s)", "train_wall_s", "{:.1f}"),
            ("steady structures/s", "steady_structures_per_s", "{:.1f}"),
            ("overall structures/s", "overall_structures_per_s", "{:.1f}")]
    ratios = {key: (ours[key] / theirs[key] if ours.get(key) and theirs.get(key) else None) for _, key, _ in rows}
    print(f"\n{args.molecule}, {args.minutes:g} min each, {n_train} train, {theirs['n_test']} test structures, "
          f"cores {cores}")
    print(f"  {'':26s} {'mmlwf':>10s} {'apax':>10s} {'mmlwf/apax':>11s}")
    for label, key, fmt in rows:
        cell = [fmt.format(d[key]) if d.get(key) is not None else "-" for d in (ours, theirs)]
        print(f"  {label:26s} {cell[0]:>10s} {cell[1]:>10s} {ratios[key] or float('nan'):11.3f}")
    print("  (MAE ratio < 1: mmlwf more accurate; structures/s ratio > 1: mmlwf faster)")
    print(f"  1-min load average before/after training: mmlwf {ours['load_avg_before_after']}, "
          f"apax {theirs['load_avg_before_after']} (more than {len(cores)}: the cores were shared)")
    print(json.dumps({"benchmark": "peer_apax", "molecule": args.molecule, "minutes": args.minutes,
                      "smoke": args.smoke, "cores": cores, "n_train": n_train, "n_valid": n_valid,
                      "mmlwf": {**ours, "versions": ours_versions, "config": config, "element_energies": data["element_energies"]},
                      "apax": {**theirs, "versions": versions, "config": apax_cfg,
                               "calibration": {"epochs": cal_epochs, "wall_s": cal["wall_s"], "epoch_s": cal["epoch_s"],
                                               "steady_epoch_s": epoch_s, "fixed_s": fixed_s}},
                      "ratios_mmlwf_over_apax": ratios}, default=str))
    return 0


if __name__ == "__main__":
    from mmlwf.errors import ConfigError, DataError

    try:
        sys.exit(main())
    except (ConfigError, DataError) as exc:
        sys.exit(f"peer_apax: {exc}")
