"""Calibration and out-of-distribution signal of an ensemble's spread (issue 16).

    python benchmarks/ensemble_calibration.py calibration          # rMD17 aspirin, N = 4, 15 epochs
    python benchmarks/ensemble_calibration.py ood                  # ethanol test: demo-trained vs ethanol-trained
    python benchmarks/ensemble_calibration.py calibration --epochs 30 --members 8
    python benchmarks/ensemble_calibration.py calibration --bootstrap   # members on their own resamples

``calibration``: an ensemble (``ensemble.size`` ``--members``, every other setting the project's
default, ``--epochs`` epochs) trained on the shared rMD17 aspirin training file (950 train /
50 validation, seed 0); on the 1 800 test structures, the error of the member mean against
the spread (per structure for energies, per atom for forces): Spearman rho of |error| vs
spread, miscalibration area, Gaussian NLL and the RMS normalised error, raw and with the
scale factors fitted on the validation split at the end of training (``model.json``
``ensemble.scale``). Target: force Spearman >= 0.5.

``ood``: the same ensemble trained on the demo molecules (``results/demo/demo.extxyz`` of the
demo workflow: H2O, NH3, CH4, CH3OH, H2CO, C2H4 by GFN2-xTB, with its isolated atoms) and on
rMD17 ethanol's own training file; the force spread per atom of each on the ethanol test
structures (an unseen molecule for the first). Target: median ratio demo / ethanol >= 3.
Run the demo workflow first (``snakemake --cores 2``) or give ``--demo``.

Epochs, not a time budget, so that the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy_rmd17 import DATA, FILES, prepare  # noqa: E402


def train_ensemble(data: dict, run_dir: Path, members: int, epochs: int, bootstrap: bool = False) -> None:
    from mmlwf.training.runner import run_training

    config = {"model": {"type": "physnet"}, "training": {"max_epochs": epochs},
              "ensemble": {"size": members, "bootstrap": bootstrap}}
    summary = run_training(config, data["train"], data["split_npz"], data["stats"], run_dir, progress=False)
    print(f"  trained {run_dir.name}: {summary['status']} after {summary['epochs']} epochs, "
          f"{summary['wall_time_s']:.0f} s", flush=True)


def errors_on(run_dir: Path, dataset: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{energy|forces: (error of the member mean, raw spread)}`` of a run's best ensemble on
    every structure of ``dataset``."""
    from mmlwf.batching import BatchLoader
    from mmlwf.inference import load_run
    from mmlwf.packed import PackedDataset
    from mmlwf.training.members import member_errors

    run = load_run(run_dir)
    ds = PackedDataset(dataset)
    loader = BatchLoader(ds, np.arange(len(ds)), batch_size=32, cutoff=run.pair_cutoff,
                         long_cutoff=run.long_pair_cutoff, shuffle=False, n_shapes=2)
    return member_errors(run.kind.make_forward(run.model), run.params, loader, run.reference)


def calibration(args) -> dict:
    from mmlwf.analysis.calibration import calibration_metrics
    from mmlwf.ensemble import spread_scale

    train_xyz, test_xyz = (DATA / f for f in FILES["aspirin"])
    with tempfile.TemporaryDirectory(prefix="mmlwf-calibration-") as tmp:
        work = Path(tmp)
        data = prepare(work, train_xyz, test_xyz)
        train_ensemble(data, work / "run", args.members, args.epochs, args.bootstrap)
        info = json.loads((work / "run" / "model.json").read_text())
        errs = errors_on(work / "run", data["test"])
    out = {"members": args.members, "epochs": args.epochs, "bootstrap": args.bootstrap, "scale": info["ensemble"].get("scale")}
    for name, unit in (("energy", "eV"), ("forces", "eV_per_A")):
        error, spread = errs[name]
        out[f"{name}_mae"] = float(np.mean(np.abs(error)))  # forces: per component
        out[name] = {"raw": calibration_metrics(error, spread, name, unit),
                     "scaled": calibration_metrics(error, spread, name, unit, spread_scale(info, name))}
    for name in ("energy", "forces"):
        for which in ("raw", "scaled"):
            m = out[name][which]
            print(f"{name:7s} {which:6s} spearman {m[f'{name}_spread_spearman']:.3f}  miscalibration area "
                  f"{m[f'{name}_miscalibration_area']:.3f}  RMS normalised error {m[f'{name}_rms_normalised_error']:.2f}"
                  f"  (scale {m[f'{name}_spread_scale']:.2f})")
    return out


def ood(args) -> dict:
    train_xyz, test_xyz = (DATA / f for f in FILES["ethanol"])
    demo = Path(args.demo)
    isolated = demo.parent / "isolated_atoms" / demo.name
    if not demo.is_file():
        raise SystemExit(f"{demo}: no demo data (run the demo workflow first: snakemake --cores 2)")
    with tempfile.TemporaryDirectory(prefix="mmlwf-ood-") as tmp:
        work = Path(tmp)
        own = prepare(work / "ethanol", train_xyz, test_xyz)
        demo_data = prepare(work / "demo", demo, test_xyz, element_energies=str(isolated))
        train_ensemble(own, work / "run_ethanol", args.members, args.epochs, args.bootstrap)
        train_ensemble(demo_data, work / "run_demo", args.members, args.epochs, args.bootstrap)
        spread_own = errors_on(work / "run_ethanol", own["test"])["forces"][1]
        spread_demo = errors_on(work / "run_demo", own["test"])["forces"][1]
    ratio = float(np.median(spread_demo) / np.median(spread_own))
    print(f"force spread on ethanol test (median per atom, eV/Å): trained on ethanol {np.median(spread_own):.4f}, "
          f"on the demo molecules {np.median(spread_demo):.4f}: ratio {ratio:.1f} (target >= 3)")
    return {"median_spread_ethanol": float(np.median(spread_own)), "median_spread_demo": float(np.median(spread_demo)),
            "ratio": ratio, "members": args.members, "epochs": args.epochs, "bootstrap": args.bootstrap}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["calibration", "ood"])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--bootstrap", action="store_true", help="ensemble.bootstrap: each member on its own resample")
    ap.add_argument("--demo", default=str(REPO / "results" / "demo" / "demo.extxyz"))
    args = ap.parse_args()
    out = calibration(args) if args.part == "calibration" else ood(args)
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
