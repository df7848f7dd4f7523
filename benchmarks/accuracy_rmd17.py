"""Accuracy on revised MD17 ethanol within a fixed CPU time budget.

    python benchmarks/accuracy_rmd17.py                  # 5 minutes
    python benchmarks/accuracy_rmd17.py --minutes 30     # 30 minutes
    python benchmarks/accuracy_rmd17.py --smoke          # 0.5 minutes, 16 features
    python benchmarks/accuracy_rmd17.py --element-energies ../shared/data/mlff/ethanol_isolated_atoms.xyz \
        --model-json '{"basis": "exp_normal"}'           # other element energies, any model key
    python benchmarks/accuracy_rmd17.py --molecule aspirin   # rMD17 aspirin instead of ethanol

Trains PhysNet with the project's default settings (what an experiment gets without asking;
only the time budget is given, as ``training.max_time_min``) on ``rmd17_ethanol_train_1000.xyz``
(950 train / 50 valid), in ``--segments`` of ``minutes / segments`` (each resumes the run
directory), and after each segment evaluates the best parameters on the disjoint ``rmd17_ethanol_test_1000.xyz`` (``--molecule
aspirin``: ``rmd17_aspirin_train.xyz``, 1150 / 50, and ``rmd17_aspirin_test.xyz``): energy
and force MAE (meV, meV/Å) against minutes of training. Target on the development machine:
force MAE <= 40 meV/Å and energy MAE <= 10 meV.

``--element-energies FILE|fit``: the element reference energies (a file of isolated atoms, e.g.
``ethanol_isolated_atoms.xyz``, or the least-squares fit); without it, the checkout's default.
On a checkout whose ``compute_stats`` has no such option the file's energies are written into
``stats.json`` (see ``benchmarks/transfer_totals.py``). ``--model-json``/``--training-json``
add or replace keys of the model and training settings (a key the checkout does not know is
its one-line settings error).

Before/after at the same budget (e.g. around an issue): run this script from this checkout
against the other commit's package, which ``PYTHONPATH`` puts before the installed one (the
first line printed names the package it imported)::

    git worktree add --detach ../mmlwf-before <commit>
    PYTHONPATH=../mmlwf-before python benchmarks/accuracy_rmd17.py --minutes 10
    python benchmarks/accuracy_rmd17.py --minutes 10
    git worktree remove ../mmlwf-before

Run both on the same otherwise idle machine, one after the other; a model key only the newer
commit knows goes in the second command only.
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
#: the training and test files of each molecule (``--molecule``)
FILES = {"ethanol": ("rmd17_ethanol_train_1000.xyz", "rmd17_ethanol_test_1000.xyz"),
         "aspirin": ("rmd17_aspirin_train.xyz", "rmd17_aspirin_test.xyz")}


#: the only training setting this benchmark sets: no epoch limit (the time budget, per segment, is
#: given when training); every other model and training setting is the project's default, the
#: settings a user's experiment gets (``tests/test_bench_defaults.py`` checks this)
BUDGET = {"max_epochs": 1_000_000}
#: ``--smoke``: a narrower PhysNet
SMOKE_MODEL = {"features": 16}


def physnet_config(model: dict | None = None, training: dict | None = None) -> dict:
    """The run config: PhysNet with the project's defaults, no epoch limit, plus ``model``/``training`` keys."""
    return {"model": {"type": "physnet", **(model or {})}, "training": {**BUDGET, **(training or {})}}


def prepare(work: Path, train_xyz: Path, test_xyz: Path, element_energies: str | None = None) -> dict:
    """Packed ``work/train`` and ``work/test``, the 950/50 ``work/split.npz`` (seed 0) and
    ``work/stats.json``; returns their paths, the split and how the element energies were made."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from transfer_totals import make_stats  # benchmarks/ is on sys.path as the script's folder

    train_ds, test_ds = work / "train", work / "test"
    if not train_ds.exists():
        convert([train_xyz], train_ds)
    if not test_ds.exists():
        convert([test_xyz], test_ds)
    split = split_dataset(train_ds, work / "split.npz", valid=50, test=0, seed=0)
    how = make_stats(element_energies, train_ds, work / "split.npz", work / "stats.json")
    return {"train": train_ds, "test": test_ds, "split_npz": work / "split.npz", "stats": work / "stats.json",
            "split": split, "element_energies": how}


def train_and_test(config: dict, data: dict, run_dir: Path, minutes: float, segments: int) -> list[dict]:
    """Train ``config`` for ``minutes`` in ``segments`` (each resumes ``run_dir``); after each, the
    test error of the best (EMA) parameters: one row per segment that finished an epoch."""
    from mmlwf.analysis import energy_force_metrics, load_run, predict
    from mmlwf.training.runner import run_training

    args = (config, data["train"], data["split_npz"], data["stats"], run_dir)
    curve = []
    trained_s = 0.0
    for k in range(segments):
        t0 = time.perf_counter()
        summary = run_training(*args, overrides=[f"training.max_time_min={minutes / segments}"], progress=False)
        if summary["best_epoch"] is None and k == segments - 1:  # budget spent compiling: one epoch more
            print(f"no epoch within {minutes:g} min; finishing epoch {summary['epochs'] + 1} beyond it")
            summary = run_training(*args, overrides=[f"training.max_epochs={summary['epochs'] + 1}"], progress=False)
        trained_s += time.perf_counter() - t0
        if summary["best_epoch"] is None:  # no epoch finished yet (compilation takes a while)
            continue
        m = energy_force_metrics(predict(load_run(run_dir), data["test"]))
        row = {"minutes": trained_s / 60, "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
               "energy_mae_meV": 1000 * m["energy_mae_eV"], "forces_mae_meV_per_A": 1000 * m["forces_mae_eV_per_A"],
               "energy_rmse_meV": 1000 * m["energy_rmse_eV"], "forces_rmse_meV_per_A": 1000 * m["forces_rmse_eV_per_A"],
               "n_test": m["n_structures"]}
        curve.append(row)
        print(f"{row['minutes']:6.1f} min  epoch {row['epochs']:5d}  test energy MAE {row['energy_mae_meV']:8.2f} meV"
              f"  force MAE {row['forces_mae_meV_per_A']:8.2f} meV/Å", flush=True)
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget (default %(default)s)")
    ap.add_argument("--segments", type=int, default=1, help="evaluations on the test set, each after its share "
                    "of the minutes (default %(default)s; each segment resumes the run, so a decaying schedule "
                    "sized to the time budget is sized to the first segment: give it a decay_steps)")
    ap.add_argument("--element-energies", default=None, metavar="FILE|fit",
                    help="element reference energies: a file of isolated atoms or 'fit' (default: the checkout's)")
    ap.add_argument("--model-json", default="{}", help="model keys added or replaced (JSON)")
    ap.add_argument("--training-json", default="{}", help="training keys added or replaced (JSON)")
    ap.add_argument("--molecule", choices=sorted(FILES), default="ethanol",
                    help="the rMD17 molecule (default %(default)s; aspirin: 1200 train / 1800 test frames)")
    ap.add_argument("--smoke", action="store_true", help="smoke size: --minutes 0.5 --segments 1, 16 features")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.segments = 0.5, 1
    train_xyz, test_xyz = (DATA / name for name in FILES[args.molecule])
    if not (train_xyz.exists() and test_xyz.exists()):
        print(f"needs {train_xyz} and {test_xyz}", file=sys.stderr)
        return 2

    import mmlwf

    print(f"mmlwf {mmlwf.__version__} from {Path(mmlwf.__file__).parent}", flush=True)

    with tempfile.TemporaryDirectory(prefix="mmlwf-acc-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare(work, train_xyz, test_xyz, args.element_energies)
        how = data["element_energies"]
        print(f"element energies: {how}", flush=True)
        model = {**(SMOKE_MODEL if args.smoke else {}), **json.loads(args.model_json)}
        config = physnet_config(model, json.loads(args.training_json))
        curve = train_and_test(config, data, work / "run", args.minutes, args.segments)
        last = curve[-1]
        ok = last["forces_mae_meV_per_A"] <= 40 and last["energy_mae_meV"] <= 10
        print(f"target (force MAE <= 40 meV/Å, energy MAE <= 10 meV): {'PASS' if ok else 'FAIL'}")
        print(json.dumps({"benchmark": "accuracy_rmd17", "molecule": args.molecule, "mmlwf": str(Path(mmlwf.__file__).parent),
                          "element_energies": how, "config": config, "curve": curve, "pass": ok}))
    return 0


if __name__ == "__main__":
    from mmlwf.errors import ConfigError, DataError

    try:
        sys.exit(main())
    except (ConfigError, DataError) as exc:  # a setting this checkout does not know, bad data: one line
        sys.exit(f"accuracy_rmd17: {exc}")
