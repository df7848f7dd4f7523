"""Fine-tuning against training from scratch on 50 structures of rMD17 ethanol (issue 17).

    python benchmarks/finetune_ethanol.py                       # pretrain 100 epochs; 30 and 120 epochs on ethanol
    python benchmarks/finetune_ethanol.py --pretrain-epochs 200 --epochs 50 200
    python benchmarks/finetune_ethanol.py --smoke               # 16 features, a few epochs: the script runs

1. **Pretraining**: PhysNet with the project's defaults on the demo molecules
   (``results/demo/demo.extxyz`` of the demo workflow: H2O, NH3, CH4, CH3OH, H2CO, C2H4 by
   GFN2-xTB, with that teacher's isolated-atom energies; no ethanol among them).
2. **The small set**: 60 structures drawn (seed 0) from ``rmd17_ethanol_train_1000.xyz``
   (PBE/def2-SVP, another level of theory): 50 train, 10 validation. Element energies from
   ``ethanol_isolated_atoms.xyz`` (50 frames of one composition cannot determine them).
3. For each budget of ``--epochs``: the pretrained model fine-tuned (``finetune.init_from``,
   every other setting the default: the source's model settings, all parts trained, the
   fine-tuning learning rate), and the same model trained from scratch, the same epochs on the
   same 50. Same architecture and nothing frozen, so an epoch costs the same in both: equal
   epochs are equal fine-tuning time (both wall times are printed). Test: energy and force
   MAE of the best (EMA) parameters on the 1 000 structures of ``rmd17_ethanol_test_1000.xyz``.

Epochs, not a time budget, so that the comparison does not depend on the machine's load.
Run the demo workflow first (``snakemake --cores 2``) or give ``--demo``.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy_rmd17 import DATA, FILES, prepare

SMALL_TRAIN, SMALL_VALID = 50, 10
SMOKE_MODEL = {"features": 16}


def small_set(work: Path, seed: int = 0) -> dict:
    """The 50 + 10 ethanol structures, packed and split, with the isolated-atom element energies."""
    import ase.io
    from transfer_totals import make_stats

    from mmlwf.convert import convert
    from mmlwf.split import split_dataset

    frames = ase.io.read(DATA / FILES["ethanol"][0], ":")
    pick = np.random.default_rng(seed).choice(len(frames), SMALL_TRAIN + SMALL_VALID, replace=False)
    work.mkdir(parents=True, exist_ok=True)
    ase.io.write(work / "small.extxyz", [frames[i] for i in sorted(pick)], format="extxyz")
    convert([work / "small.extxyz"], work / "train")
    convert([DATA / FILES["ethanol"][1]], work / "test")
    split_dataset(work / "train", work / "split.npz", valid=SMALL_VALID, test=0, seed=seed)
    make_stats(str(DATA / "ethanol_isolated_atoms.xyz"), work / "train", work / "split.npz", work / "stats.json")
    return {"train": work / "train", "test": work / "test", "split_npz": work / "split.npz",
            "stats": work / "stats.json"}


def train(config: dict, data: dict, run_dir: Path) -> dict:
    """Train ``config`` on ``data``; the wall time and the best parameters' test errors."""
    from mmlwf.analysis import energy_force_metrics, load_run, predict
    from mmlwf.training.runner import run_training

    t0 = time.perf_counter()
    summary = run_training(config, data["train"], data["split_npz"], data["stats"], run_dir, progress=False)
    seconds = time.perf_counter() - t0
    m = energy_force_metrics(predict(load_run(run_dir), data["test"]))
    return {"epochs": summary["epochs"], "best_epoch": summary["best_epoch"], "seconds": seconds,
            "energy_mae_meV": 1000 * m["energy_mae_eV"], "forces_mae_meV_per_A": 1000 * m["forces_mae_eV_per_A"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--epochs", type=int, nargs="+", default=[30, 120], help="fine-tuning budgets (epochs)")
    ap.add_argument("--demo", default=str(REPO / "results" / "demo" / "demo.extxyz"))
    ap.add_argument("--smoke", action="store_true", help="16 features, 3 pretraining epochs, 3 epochs on ethanol")
    args = ap.parse_args()
    demo = Path(args.demo)
    if not demo.is_file():
        raise SystemExit(f"{demo}: no demo data (run the demo workflow first: snakemake --cores 2)")
    model = {"type": "physnet", **(SMOKE_MODEL if args.smoke else {})}
    pre_epochs, budgets = (3, [3]) if args.smoke else (args.pretrain_epochs, args.epochs)
    out: dict = {"pretrain_epochs": pre_epochs, "n_train": SMALL_TRAIN, "n_valid": SMALL_VALID, "runs": []}
    with tempfile.TemporaryDirectory(prefix="mmlwf-finetune-") as tmp:
        work = Path(tmp)
        pre_data = prepare(work / "demo", demo, DATA / FILES["ethanol"][1],
                           element_energies=str(demo.parent / "isolated_atoms" / demo.name))
        pre = train({"model": model, "training": {"max_epochs": pre_epochs}}, pre_data, work / "pretrained")
        out["pretrained"] = pre
        print(f"pretrained on the demo molecules: {pre['epochs']} epochs, {pre['seconds']:.0f} s; on ethanol test "
              f"(never seen) F MAE {pre['forces_mae_meV_per_A']:.0f} meV/Å", flush=True)
        small = small_set(work / "ethanol")
        for epochs in budgets:
            for name, config in (
                    ("fine-tuned", {"finetune": {"init_from": str(work / "pretrained")},
                                    "training": {"max_epochs": epochs}}),
                    ("from scratch", {"model": model, "training": {"max_epochs": epochs}})):
                row = {"start": name, **train(config, small, work / f"{name.replace(' ', '_')}_{epochs}")}
                out["runs"].append(row)
                print(f"{epochs:4d} epochs {name:12s} {row['seconds']:6.0f} s  test E MAE "
                      f"{row['energy_mae_meV']:7.1f} meV  F MAE {row['forces_mae_meV_per_A']:6.1f} meV/Å", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
