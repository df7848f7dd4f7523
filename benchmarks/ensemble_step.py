"""Cost of an ensemble's train step relative to one model's, on the same batches (issue 16):
a full ensemble (members vmapped) and a shallow one (output heads of one model).

    python benchmarks/ensemble_step.py                 # N = 4, PhysNet 64 features, degree 0, 3 iterations
    python benchmarks/ensemble_step.py --members 8 --steps 60
    python benchmarks/ensemble_step.py --smoke         # a narrow model, few steps

The project's own train step (:func:`mmlwf.training.state.make_train_step`, the optimiser the
defaults make, EMA on) for PhysNet (``features`` 64, ``max_degree`` 0, 3 iterations, the
project's other defaults) on batches of 32 rMD17 aspirin molecules (``training.batch_size``
32, one batch shape), once for one model, once for an ``N``-member ensemble (``ensemble.size``:
members vmapped, batch shared) and once for a shallow ensemble of ``N`` heads (``ensemble.kind:
shallow``, its default ``loss: nll``: forces of the heads' mean, one backward pass). The three
run interleaved, in alternating blocks of ``--block`` steps, each block timed up to its last
step's result, so all see the same load on a shared machine; the first block of each
(compilation) is left out. Reported: seconds per step of each, the ratios to one model and the
full ensemble's saving against ``N`` separately trained models (``1 - ratio / N``). Targets for
N = 4: full ratio <= 3.2 (at least 20 % cheaper than four models), shallow ratio <= 1.3. Data:
../shared/data/mlff/rmd17_aspirin_train.xyz (converted into a temporary folder).
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
DATA = REPO.parent / "shared" / "data" / "mlff" / "rmd17_aspirin_train.xyz"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = {"type": "physnet", "features": 64, "max_degree": 0, "num_iterations": 3}
TRAINING = {"batch_size": 32, "max_epochs": 1000}
TARGET_RATIO = {4: 3.2}
SHALLOW_TARGET_RATIO = {4: 1.3}


def build(members: int, work: Path, model: dict, kind: str = "full"):
    """``(step, state, batches, lr_factor)`` of the project's train step for an ensemble of
    ``members`` of ``kind`` (1: one model)."""
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split
    from mmlwf.stats import load_stats
    from mmlwf.training import load_config
    from mmlwf.training.setup import TrainingJob, prepare
    from mmlwf.training.history import RunLog
    from mmlwf.training.progress import TrainingProgress
    from mmlwf.inference import build_model
    from mmlwf.training.losses import prepare_batch

    config = load_config({"model": model, "training": TRAINING, "ensemble": {"size": members, "kind": kind}})
    ds = PackedDataset(work / "packed")
    split = load_split(work / "split.npz")
    net = build_model(config.model)  # a shallow ensemble's: with output heads
    loader = BatchLoader(ds, split.train, batch_size=32, cutoff=net.cutoff, seed=0, n_shapes=1)
    stats = load_stats(work / "stats.json")
    job = TrainingJob.make(work / f"run{members}{kind}", net, config, loader, None, stats["element_energies_by_Z"],
                           init_stats=stats)
    log = RunLog(work / f"train{members}{kind}.log", TrainingProgress(False))
    p = prepare(job, log)
    batches = [prepare_batch(b, p.table) for b in loader.epoch(0)]
    return p.train_step, p.state, batches, np.float32(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="timed steps of each (after the compiling block)")
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="features 16, 10 steps")
    args = ap.parse_args()
    model = dict(MODEL, **({"features": 16} if args.smoke else {}))
    steps = 10 if args.smoke else args.steps

    import jax

    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    with tempfile.TemporaryDirectory(prefix="mmlwf-ensemble-step-") as tmp:
        work = Path(tmp)
        convert([DATA], work / "packed")
        split_dataset(work / "packed", work / "split.npz", valid=50, test=0, seed=0)
        write_stats(compute_stats(work / "packed", work / "split.npz"), work / "stats.json")
        runs = {"single": build(1, work, model), "ensemble": build(args.members, work, model),
                "shallow": build(args.members, work, model, "shallow")}
        states = {k: v[1] for k, v in runs.items()}
        times = {k: [] for k in runs}
        done = {k: 0 for k in runs}
        at = 0
        first = True
        while min(done.values()) < steps:
            for name, (step, _, batches, lr) in runs.items():
                t0 = time.perf_counter()
                for j in range(args.block):
                    states[name], metrics = step(states[name], batches[(at + j) % len(batches)], lr)
                jax.block_until_ready(metrics.values)
                if not first:
                    times[name].append((time.perf_counter() - t0) / args.block)
                    done[name] += args.block
            at += args.block
            first = False
        per_step = {k: float(np.median(v)) for k, v in times.items()}
    ratio = per_step["ensemble"] / per_step["single"]
    shallow = per_step["shallow"] / per_step["single"]
    saving = 1.0 - ratio / args.members
    n_atoms = 21 * 32
    print(f"PhysNet {model['features']} features, degree 0, {model['num_iterations']} iterations, batches of 32 "
          f"aspirin ({n_atoms} atoms), {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    print(f"  one model:            {1000 * per_step['single']:8.1f} ms/step")
    print(f"  ensemble of {args.members}:        {1000 * per_step['ensemble']:8.1f} ms/step  "
          f"({ratio:.2f}x one model; {100 * saving:.0f} % cheaper than {args.members} separate models)")
    print(f"  shallow, {args.members} heads:     {1000 * per_step['shallow']:8.1f} ms/step  ({shallow:.2f}x one model)")
    target = TARGET_RATIO.get(args.members)
    shallow_target = SHALLOW_TARGET_RATIO.get(args.members)
    print(json.dumps({"members": args.members, "single_ms": 1000 * per_step["single"],
                      "ensemble_ms": 1000 * per_step["ensemble"], "ratio": ratio, "saving_vs_separate": saving,
                      "target_ratio": target, "met": None if target is None else ratio <= target,
                      "shallow_ms": 1000 * per_step["shallow"], "shallow_ratio": shallow,
                      "shallow_target_ratio": shallow_target,
                      "shallow_met": None if shallow_target is None else shallow <= shallow_target,
                      "device": jax.devices()[0].device_kind, "jax": jax.__version__, "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
