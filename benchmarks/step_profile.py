"""Where a CPU train step's time goes, and the per-epoch overheads of the real training loop.

    python benchmarks/step_profile.py                      # ethanol + aspirin, 20 rounds, 3 loop epochs
    python benchmarks/step_profile.py --smoke              # under a minute: ethanol, tiny model, few rounds
    python benchmarks/step_profile.py --xla-ops 15         # + the top XLA ops of the train step (jax.profiler)
    python benchmarks/step_profile.py --compare ../wt-old  # (e) also for the package in ../wt-old, alternated

PhysNet with the project's default model settings (mmlwf/settings/models.py) and the
accuracy benchmark's training settings (``benchmarks/accuracy_rmd17.py``: batch size 16,
plateau, EMA 0.99) on rMD17 ethanol (``rmd17_ethanol_train_1000.xyz``, 950 train / 50 valid)
and aspirin (``rmd17_aspirin_train.xyz``, the same 50 valid), converted with
:func:`mmlwf.convert.convert` into a temporary folder. The step pieces are those training
builds (:func:`mmlwf.training.setup.prepare`), timed with ``jax.block_until_ready`` on a pool of
batches of epoch 0, in ONE process, interleaved round by round (each round times every piece
once, in a rotating order), so that load on a shared machine hits them alike; the median
over the rounds is reported:

(a) ``assemble``: the loader's batch assembly on the host (``BatchLoader.assemble``: rows,
    neighbour list, padding) plus ``prepare_batch`` (targets, dtypes), one thread;
    ``put``: ``jax.device_put`` of the prepared batch; ``loop``: the training loop's pattern
    (the loader's prefetching iterator, the step, the previous step's metrics fetched) over
    the pool, and ``wait``: the share of that loop spent waiting for the next batch;
(b) ``energy``: the forward energy only (``model.apply``);
(c) ``energy+forces``: the kind's forward (forces = -dE/dR);
(d) ``train step``: the jitted step (:func:`mmlwf.training.state.make_train_step`: loss, its
    gradient, optimiser update, EMA), on prepared batches already on the device;
(e) the real loop (:func:`mmlwf.training.runner.run_training`) on ethanol for ``--epochs``
    epochs, in a child process each (``--compare DIR``: alternated with the package in DIR):
    per steady epoch (after the first, which compiles) the training loop, the validation
    pass, the ``latest`` and ``best`` checkpoint writes (orbax) and the rest, as shares of the
    epoch, and structures/s per epoch including all of it.

Prints a table per dataset and one JSON line (``"benchmark": "step_profile"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mlff"
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATASETS = {"ethanol": "rmd17_ethanol_train_1000.xyz", "aspirin": "rmd17_aspirin_train.xyz"}
PIECES = ("assemble", "put", "energy", "energy+forces", "train step", "loop")


def config(features: int | None = None, iterations: int | None = None) -> dict:
    """The run config: project model defaults, the accuracy benchmark's training settings."""
    model = {"type": "physnet"}
    if features is not None:
        model["features"] = features
    if iterations is not None:
        model["num_iterations"] = iterations
    training = {"batch_size": 16, "schedule": "plateau", "ema_decay": 0.99, "seed": 0,
                "early_stopping_patience": 1_000_000}
    return {"model": model, "training": training}


def prepare_data(work: Path, name: str) -> dict:
    """Packed ``work/name``, its 50-valid split and stats (as the accuracy benchmark makes them)."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from transfer_totals import make_stats

    ds = work / name
    convert([DATA / DATASETS[name]], ds)
    split_dataset(ds, work / f"{name}_split.npz", valid=50, test=0, seed=0)
    make_stats(None, ds, work / f"{name}_split.npz", work / f"{name}_stats.json")
    return {"data": ds, "split": work / f"{name}_split.npz", "stats": work / f"{name}_stats.json"}


class _Log:
    def line(self, message: str, terminal: bool = True) -> None:
        pass


def build(files: dict, cfg_dict: dict, run_dir: Path):
    """The loaders, the model and :func:`~mmlwf.training.setup.prepare`'s steps for ``files``."""
    from mmlwf.models.registry import kind_of_config
    from mmlwf.packed import PackedDataset
    from mmlwf.training.config import Config, load_config
    from mmlwf.training.data import data_facts, element_energies_from_stats, make_loaders
    from mmlwf.training.setup import TrainingJob, prepare

    cfg = load_config(cfg_dict, ())
    kind = kind_of_config(cfg.model)
    resolved, _ = kind.resolve_settings(cfg.model, data_facts([PackedDataset(files["data"])]))
    cfg = Config(resolved, cfg.training)
    model = kind.build_model(cfg.model)
    forward = kind.make_forward(model, cfg.training)
    train_loader, valid_loader = make_loaders(files["data"], files["split"], cfg, cutoff=kind.pair_cutoff(model),
                                              long_cutoff=kind.long_pair_cutoff(model))
    job = TrainingJob.make(run_dir, model, cfg, train_loader, valid_loader,
                           element_energies_from_stats(files["stats"]), forward)
    return job, prepare(job, _Log())


def profile(files: dict, cfg_dict: dict, rounds: int, pool: int, tmp: Path, xla_ops: int) -> dict:
    """Per-step seconds of (a)-(d), medians over ``rounds`` interleaved rounds of ``pool`` batches."""
    import jax
    import jax.numpy as jnp

    from mmlwf.training.losses import model_inputs, prepare_batch

    job, p = build(files, cfg_dict, tmp / "unused_run")
    loader, table = job.train_loader, p.table
    specs = loader.plan(0)[:pool]
    host = [prepare_batch(loader.assemble(*s), table) for s in specs]
    dev = [jax.device_put(b) for b in host]
    jax.block_until_ready(dev)
    params = jax.tree.map(jnp.copy, p.state["params"])  # the step donates the state

    @jax.jit
    def energy(params, b):
        out = job.model.apply(params, *model_inputs(b))
        return jnp.sum(jnp.where(b.graph_mask, out["energy"], 0.0))

    forces = jax.jit(job.forward)
    state = {"s": p.state}
    factor = np.float32(1.0)

    def run_assemble():
        for s in specs:
            prepare_batch(loader.assemble(*s), table)

    def run_put():
        jax.block_until_ready([jax.device_put(b) for b in host])

    def run_energy():
        jax.block_until_ready([energy(params, b) for b in dev])

    def run_forces():
        jax.block_until_ready([forces(params, b) for b in dev])

    def run_step():
        s = state["s"]
        for b in dev:
            s, m = p.train_step(s, b, factor)
        state["s"] = jax.block_until_ready(s)

    waits = []

    def run_loop():  # the training loop's pattern (engine._Run.run_epoch) over the pool's batches
        s, pending, waited = state["s"], None, 0.0
        it = _prefetched(loader, specs)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            s, m = p.train_step(s, prepare_batch(batch, table), factor)
            if pending is not None:
                jax.device_get(pending)
            pending = m
        jax.device_get(pending)
        state["s"] = jax.block_until_ready(s)
        waits.append(waited)

    runs = {"assemble": run_assemble, "put": run_put, "energy": run_energy, "energy+forces": run_forces,
            "train step": run_step, "loop": run_loop}
    for fn in runs.values():  # compile, warm up
        fn()
    waits.clear()
    times = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runs[k]()
            times[k].append((time.perf_counter() - t) / len(specs))
    med = {k: statistics.median(v) for k, v in times.items()}
    loop_total = [t * len(specs) for t in times["loop"]]
    out = {"per_step_ms": {k: 1e3 * v for k, v in med.items()},
           "wait_share": statistics.median(w / t for w, t in zip(waits, loop_total)),
           "structures_per_step": float(np.mean([np.sum(b.graph_mask) for b in host])),
           "shape": {"atoms": int(host[0].Z.shape[0]), "pairs": int(host[0].pairs.dst.shape[0]),
                     "graphs": int(host[0].graph_mask.shape[0])},
           "batches": len(specs), "rounds": rounds}
    if xla_ops:
        out["xla_top_ops"] = xla_top_ops(run_step, tmp / "trace", xla_ops)
    return out


def _prefetched(loader, specs):
    """The loader's background assembly (its threads, prefetch depth) over ``specs``."""
    from mmlwf.batching.loader import _ordered_map

    if loader.prefetch <= 0:
        return (loader.assemble(*s) for s in specs)
    return _ordered_map(lambda s: loader.assemble(*s), specs, loader.prefetch, loader.workers)


def xla_top_ops(run_step, trace_dir: Path, top: int) -> list[dict]:
    """The ``top`` XLA ops of the train step by self time (jax.profiler trace of one pool pass)."""
    import gzip

    import jax

    jax.profiler.start_trace(str(trace_dir))
    run_step()
    jax.profiler.stop_trace()
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        return [{"note": "no trace written"}]
    events = json.loads(gzip.open(files[-1]).read()).get("traceEvents", [])
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and "dur" in e and "hlo_op" in (e.get("args") or {}):
            by_op[e["name"]] = by_op.get(e["name"], 0.0) + e["dur"]
    if not by_op:  # CPU traces name the thunks without hlo_op args: take the XLA thread's events
        for e in events:
            if e.get("ph") == "X" and "dur" in e and not str(e.get("name", "")).startswith(("$", "Pjit", "pjit")):
                by_op[e["name"]] = by_op.get(e["name"], 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": k, "share": v / total} for k, v in ranked]


# ----------------------------------------------------------------------------- (e) the real loop

_CHILD = r"""
import json, sys, time
from pathlib import Path
from mmlwf.training import engine, checkpoint
from mmlwf.training.runner import run_training
from mmlwf.training.history import read_history
spent = {"valid": [], "latest": [], "best": []}
def timed(cls, name, key):
    orig = getattr(cls, name)
    def wrapper(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            spent[key].append(time.perf_counter() - t)
    setattr(cls, name, wrapper)
timed(engine._Run, "validate", "valid")
timed(checkpoint.CheckpointStore, "save_latest", "latest")
timed(checkpoint.CheckpointStore, "save_best", "best")
a = json.loads(sys.argv[1])
run = Path(a["run"])
summary = run_training(a["config"], a["data"], a["split"], a["stats"], run, progress=False,
                       overrides=[f"training.max_epochs={a['epochs']}"])
print("RESULT " + json.dumps({"history": read_history(run / "history.csv"),
                              "spent": spent}))
"""


def real_loop(files: dict, cfg_dict: dict, epochs: int, run: Path, package: Path | None) -> dict:
    """One training of ``epochs`` epochs in a child process (``package``: imported from there)."""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package), env.get("PYTHONPATH", "")])
    arg = json.dumps({"run": str(run), "config": cfg_dict, "epochs": epochs,
                      **{k: str(v) for k, v in files.items()}})
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, env=env,
                          cwd=str(package or REPO))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"real loop failed ({package or REPO}):\n{proc.stderr[-3000:]}")
    got = json.loads(line[-1][7:])
    hist, spent = got["history"], got["spent"]
    walls = [h["wall_time_s"] for h in hist]
    epoch_s = np.diff(walls)  # steady epochs: 2..epochs (the first compiles)
    n_train = 950
    train_s = np.array([n_train / h["train_structures_per_s"] for h in hist[1:]])
    valid = np.array(spent["valid"][1:len(hist)])
    # per steady epoch: the writes inside the intervals (epoch k's holds epoch k-1's latest; the
    # last latest falls after the last row), averaged, since the new code writes only some epochs
    latest = np.full(len(hist) - 1, sum(spent["latest"][:-1]) / max(len(hist) - 1, 1))
    best = sum(spent["best"][1:]) / max(len(hist) - 1, 1)  # best writes after the first epoch, per epoch
    e = float(np.median(epoch_s))
    return {"epoch_s": e, "train_s": float(np.median(train_s)), "valid_s": float(np.median(valid)),
            "latest_s": float(np.median(latest)), "best_s_per_epoch": float(best),
            "structures_per_s_epoch": n_train / e, "structures_per_s_epoch_mean": n_train / float(np.mean(epoch_s)), "structures_per_s_train": float(np.median(n_train / train_s)),
            "best_writes": len(spent["best"]), "latest_writes": len(spent["latest"]), "epochs": len(hist)}


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ethanol,aspirin")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds of (a)-(d) (default %(default)s)")
    ap.add_argument("--pool", type=int, default=20, help="batches per piece per round (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of each real-loop run (e) (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="real-loop runs per package (default %(default)s)")
    ap.add_argument("--compare", type=Path, default=None, help="a checkout whose package (e) alternates with this one")
    ap.add_argument("--features", type=int, default=None, help="model features (default: the project's)")
    ap.add_argument("--iterations", type=int, default=None, help="message-passing modules (default: the project's)")
    ap.add_argument("--xla-ops", type=int, default=0, help="list the top N XLA ops of the train step")
    ap.add_argument("--smoke", action="store_true",
                    help="ethanol, 8 features, 1 iteration, 2 rounds of 3 batches, one real loop of 2 epochs")
    args = ap.parse_args()
    if args.smoke:
        args.datasets, args.rounds, args.pool, args.epochs, args.repeats = "ethanol", 2, 3, 2, 1
        args.features, args.iterations = 8, 1
    names = [n for n in args.datasets.split(",") if n]
    missing = [str(DATA / DATASETS[n]) for n in names if not (DATA / DATASETS[n]).exists()]
    if missing:
        print(f"needs {', '.join(missing)}", file=sys.stderr)
        return 2
    import jax

    import mmlwf

    print(f"mmlwf {mmlwf.__version__} from {Path(mmlwf.__file__).parent}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}", flush=True)
    cfg_dict = config(args.features, args.iterations)
    result = {"benchmark": "step_profile", "config": cfg_dict, "profile": {}, "loop": {}}
    with tempfile.TemporaryDirectory(prefix="mmlwf-prof-") as tmp:
        work = Path(tmp)
        files = {n: prepare_data(work, n) for n in names}
        for n in names:
            prof = profile(files[n], cfg_dict, args.rounds, args.pool, work, args.xla_ops)
            result["profile"][n] = prof
            ms = prof["per_step_ms"]
            sps = prof["structures_per_step"]
            print(f"\n{n}: batch shape {prof['shape']}, {sps:.1f} structures/step, {prof['batches']} batches "
                  f"x {prof['rounds']} rounds (median ms per step)")
            for k in PIECES:
                share = f"{100 * ms[k] / ms['loop']:5.1f} % of loop" if k != "loop" else ""
                print(f"  {k:14s} {ms[k]:8.2f} ms  {share}")
            print(f"  waiting for the next batch in the loop: {100 * prof['wait_share']:.1f} %;  "
                  f"train step {1e3 * sps / ms['train step']:.0f} structures/s, loop {1e3 * sps / ms['loop']:.0f}")
            for op in prof.get("xla_top_ops", []):
                print(f"    {op.get('share', 0) * 100:5.1f} %  {op.get('op', op)}")
        if "ethanol" in files:
            packages = [("this", None)] + ([("compare", args.compare.resolve())] if args.compare else [])
            runs = {k: [] for k, _ in packages}
            for r in range(args.repeats):
                for k, pkg in (packages if r % 2 == 0 else packages[::-1]):
                    runs[k].append(real_loop(files["ethanol"], cfg_dict, args.epochs, work / f"run_{k}_{r}", pkg))
            print(f"\n(e) real loop, ethanol 950/50, {args.epochs} epochs x {args.repeats} runs (median of steady epochs)")
            for k, rs in runs.items():
                agg = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                result["loop"][k] = agg
                e = agg["epoch_s"]
                rest = e - agg["train_s"] - agg["valid_s"] - agg["latest_s"] - agg["best_s_per_epoch"]
                print(f"  {k:8s} epoch {e:6.2f} s: train loop {100 * agg['train_s'] / e:5.1f} %, validation "
                      f"{100 * agg['valid_s'] / e:5.1f} %, latest ckpt {100 * agg['latest_s'] / e:5.1f} %, best ckpt "
                      f"{100 * agg['best_s_per_epoch'] / e:5.1f} %, rest {100 * rest / e:5.1f} %;  structures/s "
                      f"{agg['structures_per_s_epoch']:.0f} per epoch (median; mean "
                      f"{agg['structures_per_s_epoch_mean']:.0f}), {agg['structures_per_s_train']:.0f} in the loop")
            if args.compare:
                this, other = result["loop"]["this"], result["loop"]["compare"]
                for key in ("structures_per_s_epoch", "structures_per_s_epoch_mean", "structures_per_s_train"):
                    result["loop"][f"ratio_{key}"] = this[key] / other[key]
                print("  this / compare, structures/s: per epoch {:.2f} (median), {:.2f} (mean), in the loop {:.2f}"
                      .format(*(result["loop"][f"ratio_{k}"] for k in ("structures_per_s_epoch",
                                                                        "structures_per_s_epoch_mean",
                                                                        "structures_per_s_train"))))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
