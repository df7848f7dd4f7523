"""Total energies outside the training composition: isolated-atom vs fitted element energies.

    python benchmarks/transfer_totals.py                 # 5 min per model, all 1800 aspirin frames
    python benchmarks/transfer_totals.py --smoke         # smoke size (0.4 min per model, 50 frames)

PhysNet is trained on rMD17 ethanol (``rmd17_ethanol_train_1000.xyz``, 950 train / 50 valid,
PBE/def2-SVP) twice for the same wall time, once per choice of element reference energies:

- ``isolated``: the isolated-atom energies of ``ethanol_isolated_atoms.xyz`` (same level of
  theory), through ``mmlwf.stats.compute_stats(..., element_energies=FILE)`` where this checkout
  has that option; otherwise (printed) the same numbers written into ``stats.json``'s element
  table, which is what training reads;
- ``fit``: the least-squares fit on the training set (on one composition only the sum over
  ethanol's formula is determined: the minimum-norm split). Where this checkout refuses an
  explicit fit there, the refusal is printed and its default is used (``auto``: that same split,
  with a warning).

Each model then predicts the total energies of aspirin (``rmd17_aspirin_test.xyz``, C, H, O,
the same level of theory; never seen in training): mean reference and predicted totals (eV),
mean error and mean absolute error per atom (eV/atom), and the ethanol test energy MAE (meV)
for scale. With isolated-atom references the aspirin totals should be in the right range (the
issue found -7201 eV against -17618 eV with the fit). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mlff"
FILES = {"train": "rmd17_ethanol_train_1000.xyz", "test": "rmd17_ethanol_test_1000.xyz",
         "atoms": "ethanol_isolated_atoms.xyz", "aspirin": "rmd17_aspirin_test.xyz"}


def isolated_atom_energies(path: Path) -> dict[int, float]:
    """``{Z: eV}`` of a file of single-atom structures (any ase-readable format)."""
    from ase.io import read

    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(path, ":") if len(a) == 1}


def make_stats(choice: str | None, train_ds: Path, split: Path, out: Path) -> str:
    """Write ``out``, the statistics of ``train_ds`` with the element energies ``choice``: None
    (the checkout's default), ``"fit"`` or a file of isolated atoms. Returns how they were made.

    Where this checkout's ``compute_stats`` has no ``element_energies`` option (before issue 14),
    a file's energies are written into ``stats.json``'s element table, which is all training
    reads of them, so the same comparison runs on older commits."""
    from ase.data import chemical_symbols

    from mmlwf.stats import compute_stats, write_stats

    has_option = "element_energies" in inspect.signature(compute_stats).parameters
    if choice is None or (choice == "fit" and not has_option):
        stats = compute_stats(train_ds, split)
        how = "compute_stats default" + ("" if has_option else " (a fit: this checkout has no element_energies option)")
    elif has_option:
        stats = compute_stats(train_ds, split, element_energies=choice)
        how = f"compute_stats(element_energies={Path(choice).name!r})"
    else:
        stats = compute_stats(train_ds, split)
        table = {z: e for z, e in isolated_atom_energies(Path(choice)).items() if z in stats["elements"]}
        stats["element_energies_by_Z"] = {str(z): e for z, e in table.items()}
        stats["element_energies"] = {chemical_symbols[z]: e for z, e in table.items()}
        how = f"compute_stats has no element_energies option: {Path(choice).name}'s energies written into stats.json"
    write_stats(stats, out)
    return how


def train(config: dict, train_ds: Path, split: Path, stats: Path, run_dir: Path, minutes: float) -> dict:
    """A fresh run trained for ``minutes`` of wall time (one epoch at least)."""
    from mmlwf.training.runner import run_training

    shutil.rmtree(run_dir, ignore_errors=True)
    config = json.loads(json.dumps(config))
    config["training"] |= {"max_epochs": 1_000_000, "early_stopping_patience": 1_000_000, "max_time_min": minutes}
    summary = run_training(config, train_ds, split, stats, run_dir, progress=False)
    if summary["best_epoch"] is None:  # the budget ended before the first epoch (compilation): finish it
        print(f"{run_dir.name}: no epoch within {minutes:g} min; finishing epoch {summary['epochs'] + 1} beyond it")
        config["training"] |= {"max_time_min": None, "max_epochs": summary["epochs"] + 1}
        summary = run_training(config, train_ds, split, stats, run_dir, progress=False)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "transfer_totals",
                    help="work folder (default %(default)s; --smoke appends _smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="smoke size: 0.4 min per model, 16 features, 1 iteration, 50 aspirin and 50 ethanol test frames")
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall time per model (default %(default)s)")
    ap.add_argument("--n-aspirin", type=int, default=None, help="aspirin frames predicted (default: all)")
    ap.add_argument("--n-test", type=int, default=None, help="ethanol test frames evaluated (default: all)")
    ap.add_argument("--model-json", default="{}", help="model keys added to the benchmark's PhysNet (JSON)")
    ap.add_argument("--training-json", default="{}", help="training keys added (JSON)")
    args = ap.parse_args(argv)
    model = {"type": "physnet", "cutoff": 5.0, "features": 64, "num_iterations": 3}
    if args.smoke:
        args.minutes, args.n_aspirin, args.n_test = 0.4, 50, 50
        model |= {"features": 16, "num_iterations": 1}
        args.out = args.out.with_name(args.out.name + "_smoke")
    paths = {k: DATA / v for k, v in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        print(f"needs {', '.join(missing)}", file=sys.stderr)
        return 2
    work = args.out
    work.mkdir(parents=True, exist_ok=True)

    from mmlwf.analysis import load_run, predict
    from mmlwf.analysis.evaluate import compute_metrics
    from mmlwf.convert import convert
    from mmlwf.errors import ConfigError, DataError
    from mmlwf.packed import PackedDataset
    from mmlwf.split import split_dataset

    packed = {}
    for name in ("train", "test", "aspirin"):
        packed[name] = work / name
        if not packed[name].exists():
            convert([paths[name]], packed[name])
    split = work / "split.npz"
    split_dataset(packed["train"], split, valid=50, test=0, seed=0)
    config = {"model": {**model, **json.loads(args.model_json)},
              "training": {"batch_size": 16, "learning_rate": 1e-3, "schedule": "plateau", "ema_decay": 0.99,
                           "seed": 0, **json.loads(args.training_json)}}
    pick = {}
    for name, n in (("test", args.n_test), ("aspirin", args.n_aspirin)):
        total = len(PackedDataset(packed[name]))
        pick[name] = np.linspace(0, total - 1, min(n or total, total)).astype(np.int64)

    rows = {}
    for choice in ("isolated", "fit"):
        stats = work / f"stats_{choice}.json"
        try:
            how = make_stats(str(paths["atoms"]) if choice == "isolated" else "fit", packed["train"], split, stats)
        except (ConfigError, DataError) as exc:
            if choice != "fit":
                raise
            # one composition: an explicit fit is refused; the default takes its minimum-norm split (warned)
            print(f"fit refused by this checkout ({exc}); the default instead")
            how = make_stats(None, packed["train"], split, stats) + f" (explicit fit refused: {exc})"
        t0 = time.perf_counter()
        summary = train(config, packed["train"], split, stats, work / f"run_{choice}", args.minutes)
        run = load_run(work / f"run_{choice}")
        refs = {int(z): float(e) for z, e in run.info["element_energies_by_Z"].items()}
        print(f"{choice}: {how}; {summary['epochs']} epochs in {time.perf_counter() - t0:.0f} s; element energies "
              + ", ".join(f"{z}: {e:.2f}" for z, e in sorted(refs.items())) + " eV", flush=True)
        ethanol = compute_metrics(predict(run, packed["test"], pick["test"]))
        asp = predict(run, packed["aspirin"], pick["aspirin"])
        per_atom = (asp["E_pred"] - asp["E_ref"]) / asp["n_atoms"]
        rows[choice] = {"stats": how, "epochs": summary["epochs"], "element_energies_by_Z": refs,
                        "ethanol_test_energy_mae_meV": 1000 * ethanol["energy_mae_eV"],
                        "ethanol_test_forces_mae_meV_per_A": 1000 * ethanol["forces_mae_eV_per_A"],
                        "aspirin_reference_eV": float(asp["E_ref"].mean()),
                        "aspirin_predicted_eV": float(asp["E_pred"].mean()),
                        "aspirin_mean_error_eV_per_atom": float(per_atom.mean()),
                        "aspirin_mae_eV_per_atom": float(np.abs(per_atom).mean())}

    print(f"\nafter {args.minutes:g} min of training each; aspirin: {pick['aspirin'].size} frames, ethanol test: "
          f"{pick['test'].size} frames")
    print(f"{'references':10s} {'ethanol E MAE meV':>18s} {'aspirin ref eV':>15s} {'aspirin pred eV':>16s} "
          f"{'mean err eV/atom':>17s} {'MAE eV/atom':>12s}")
    for choice, r in rows.items():
        print(f"{choice:10s} {r['ethanol_test_energy_mae_meV']:18.2f} {r['aspirin_reference_eV']:15.2f} "
              f"{r['aspirin_predicted_eV']:16.2f} {r['aspirin_mean_error_eV_per_atom']:17.4f} "
              f"{r['aspirin_mae_eV_per_atom']:12.4f}")
    print(json.dumps({"benchmark": "transfer_totals", "minutes_per_model": args.minutes, "config": config,
                      "n_aspirin": int(pick["aspirin"].size), "n_ethanol_test": int(pick["test"].size), "results": rows}))
    return 0


if __name__ == "__main__":
    from mmlwf.errors import ConfigError, DataError

    try:
        sys.exit(main())
    except (ConfigError, DataError) as exc:  # a setting this checkout does not know, bad data: one line
        sys.exit(f"transfer_totals: {exc}")
