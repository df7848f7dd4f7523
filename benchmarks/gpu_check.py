"""The GPU path measured (issue 17, point 5): one script for one lent GPU, under 8 minutes.

    python benchmarks/gpu_check.py --prepare           # here, once: .gpudata/ (rMD17 aspirin, packed)
    sh benchmarks/gpu_wheels.sh                        # here, once: .whl/ (what the GPU image lacks)
    python benchmarks/gpu_check.py --out DIR           # there: the table, DIR/gpu_check.json
    python benchmarks/gpu_check.py --smoke --out DIR   # here, on the CPU: tiny models, a few steps

The device command (the ``run`` tool of a session that is lent a GPU; ``carry``:
``[".whl", ".gpudata"]``; timeout_s 600; docs/gpu.md says more)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; nvidia-smi -L; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log

All on rMD17 aspirin (21 atoms), read from ``.gpudata/`` inside the checkout (``../shared``
does not travel to the GPU machine; ``--prepare`` converts the files of ``../shared/data/mlff``
there: the packed train set with its 1150/50 split and ``stats.json`` as
``benchmarks/accuracy_rmd17.py`` makes them, the packed test set, and the training xyz that
``benchmarks/ensemble_step.py`` converts itself). Every model and training setting not named
below is the project's default (``mmlwf/settings``). Parts, each guarded (a failing part is
recorded with its error and the others go on; the JSON is rewritten after each):

(a) ``step``: the project's train step (:func:`mmlwf.training.setup.prepare`: loss, gradient,
    optimiser, EMA) of PhysNet at ``features`` 64 and 128, ``max_degree`` 0 and 1, 3
    iterations, on batches of 32 molecules (``training.batch_size`` 32: 672 atoms), plus the
    project's default config (``training.batch_atoms``: what a user's run steps on). The batches
    are assembled and put on the device beforehand, so this is the step alone: median seconds
    per step over ``--rounds`` passes over a pool of ``--pool`` batches after a compiling pass;
    structures/s and atoms/s count real (unpadded) structures and atoms.
(b) ``compilations``: the XLA compilations of each config in (a) (set-up, the compiling pass;
    the timed passes must add none) and the train step's distinct batch shapes.
(c) ``loader``: during (e)'s training (the real loop, :func:`mmlwf.training.runner.run_training`),
    the time the loop spends in ``next()`` on the training loader (``loader_wait``) and on the
    loop's batch supply (``supply_wait``: the loader plus ``prepare_batch`` and the transfer to
    the device), as shares of the training loop's time (``history.csv``'s
    ``train_structures_per_s`` of the epoch), over the epochs after the first (which compiles).
    The loop dispatches step k before it fetches step k-1's metrics and then waits for batch
    k+1, so the device runs step k while the host waits: these shares bound from above the time
    the GPU idles for want of a batch. Also the loop's structures/s against (a)'s step alone at
    the default config: ``1 - loop / step`` is the share of the loop's time beyond the step
    (batch supply, dispatch, metrics).
(d) ``ensemble``: ``benchmarks/ensemble_step.py`` as it is (N = 4, PhysNet 64/0/3, batches of
    32), its data path pointed at ``.gpudata/``: ms per step of one model and of the ensemble.
(e) ``training``: PhysNet with the project's defaults trained ``--minutes`` (``training.max_time_min``)
    on the 1150 structures, then the best (EMA) parameters on the 1800 of
    ``rmd17_aspirin_test.xyz``: energy and force MAE (``benchmarks/accuracy_rmd17.py``'s
    ``train_and_test``).

Printed first: the device (``jax.devices()``), the JAX, jaxlib, flax, optax, orbax and e3x
versions; last: a table and one JSON line (``"benchmark": "gpu_check"``). ``--budget-min``
(default 6.5) is checked before each part: a part that would start past it (the training:
that would end past it) is skipped and says so. ``--smoke``: PhysNet at 8 features and degree 0 and 1, 1 iteration, a pool of 2
batches, the default row and 2 epochs of training at 16 features, ensemble_step's own ``--smoke``, no time budget
(run on the CPU here to check the script: some 10 minutes on 2 busy cores; its figures mean
nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data" / "mlff"
GPUDATA = REPO / ".gpudata"
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

#: (a): features x max_degree of PhysNet, batches of 32 molecules (issue 17, point 5)
STEP_CONFIGS = [(64, 0), (128, 0), (64, 1), (128, 1)]
STEP_BATCH = 32
STEP_ITERATIONS = 3
SMOKE_STEP_CONFIGS = [(8, 0), (8, 1)]
SMOKE_ITERATIONS = 1


# ----------------------------------------------------------------------------- data


def aspirin_files() -> tuple[str, str]:
    from accuracy_rmd17 import FILES

    return FILES["aspirin"]


def prepare_gpudata(out: Path) -> dict:
    """``out``: the packed aspirin train (1150/50 split, stats) and test sets, as the accuracy
    benchmark makes them, and the training xyz (ensemble_step converts it itself)."""
    import shutil

    from accuracy_rmd17 import prepare

    train_name, test_name = aspirin_files()
    train_xyz, test_xyz = SHARED_DATA / train_name, SHARED_DATA / test_name
    missing = [str(p) for p in (train_xyz, test_xyz) if not p.exists()]
    if missing:
        raise SystemExit(f"--prepare needs {', '.join(missing)}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = prepare(out, train_xyz, test_xyz)
    shutil.copyfile(train_xyz, out / train_name)
    meta = {"train": train_name, "test": test_name, "element_energies": data["element_energies"],
            "n_train": int(data["split"].train.size), "n_valid": int(data["split"].valid.size)}
    (out / "prepared.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB ({meta['n_train']} train / {meta['n_valid']} valid structures, "
          f"the test set, {train_name}); element energies: {meta['element_energies']}")
    return meta


def load_gpudata(root: Path) -> dict:
    meta_path = root / "prepared.json"
    if not meta_path.exists():
        raise SystemExit(f"no {meta_path}: run `python benchmarks/gpu_check.py --prepare` first (here, where "
                         f"{SHARED_DATA} exists), and carry .gpudata")
    meta = json.loads(meta_path.read_text())
    return {"train": root / "train", "test": root / "test", "split_npz": root / "split.npz",
            "stats": root / "stats.json", "train_xyz": root / meta["train"], "meta": meta}


# ----------------------------------------------------------------------------- environment


def environment() -> dict:
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "e3x", "numpy", "ase", "pydantic"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {"devices": [str(d) for d in devices], "platform": devices[0].platform,
            "device_kind": devices[0].device_kind, "jax": jax.__version__, "versions": versions,
            "python": platform.python_version(), "host": platform.node()}


# ----------------------------------------------------------------------------- (a), (b)


def step_config(features: int | None, degree: int | None, iterations: int | None, batch: int | None) -> dict:
    """The run config of (a): the named model keys and batch size, the project's defaults besides."""
    model = {"type": "physnet"}
    for key, value in (("features", features), ("max_degree", degree), ("num_iterations", iterations)):
        if value is not None:
            model[key] = value
    training = {"seed": 0}
    if batch is not None:
        training["batch_size"] = batch
    return {"model": model, "training": training}


def time_step(files: dict, cfg_dict: dict, run_dir: Path, pool: int, rounds: int) -> dict:
    """The project's train step for ``cfg_dict`` on ``pool`` device-resident batches of epoch 0."""
    import jax

    from mmlwf.training.losses import prepare_batch
    from mmlwf.training.monitor import CompileCounter
    from step_profile import build

    compiles = CompileCounter()
    t0 = time.perf_counter()
    job, p = build({"data": files["train"], "split": files["split_npz"], "stats": files["stats"]}, cfg_dict, run_dir)
    loader = job.train_loader
    specs = loader.plan(0)[:pool]
    host = [prepare_batch(loader.assemble(*s), p.table) for s in specs]
    dev = jax.block_until_ready([jax.device_put(b) for b in host])
    structures = sum(int(np.count_nonzero(b.graph_mask)) for b in host)
    atoms = sum(int(np.count_nonzero(b.atom_mask)) for b in host)
    factor = np.float32(1.0)
    state = p.state

    def one_pass(state):
        for b in dev:
            state, metrics = p.train_step(state, b, factor)
        return jax.block_until_ready(state)

    setup_s = time.perf_counter() - t0
    setup_compilations = compiles.count
    t1 = time.perf_counter()
    state = one_pass(state)  # compiles
    first_pass_s = time.perf_counter() - t1
    before_timed = compiles.count
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        state = one_pass(state)
        times.append(time.perf_counter() - t)
    per_pass = statistics.median(times)
    return {"config": cfg_dict, "batch_shape": {"atoms": int(host[0].Z.shape[0]), "pairs": int(host[0].pairs.dst.shape[0]),
                                                "graphs": int(host[0].graph_mask.shape[0])},
            "structures_per_batch": structures / len(host), "atoms_per_batch": atoms / len(host),
            "pool": len(host), "rounds": rounds, "step_ms": 1e3 * per_pass / len(host),
            "step_ms_min": 1e3 * min(times) / len(host), "step_ms_max": 1e3 * max(times) / len(host),
            "structures_per_s": structures / per_pass, "atoms_per_s": atoms / per_pass,
            "setup_s": setup_s, "first_pass_s": first_pass_s,
            "compilations_setup": setup_compilations, "compilations_first_pass": before_timed - setup_compilations,
            "compilations_timed": compiles.count - before_timed, "train_step_shapes": p.train_step.shapes,
            "n_parameters": int(p.n_parameters)}


def part_step(files: dict, args, tmp: Path, result: dict, out: Path) -> None:
    configs = SMOKE_STEP_CONFIGS if args.smoke else STEP_CONFIGS
    iterations = SMOKE_ITERATIONS if args.smoke else STEP_ITERATIONS
    rows = result.setdefault("step", {})
    named = [(f"physnet f{f} d{d} it{iterations} b{STEP_BATCH}", step_config(f, d, iterations, STEP_BATCH))
             for f, d in configs]
    default = training_config(args.smoke)  # (e)'s model and batches: (c) compares the loop with this step
    named.append(("project default" + (" (smoke: f16)" if args.smoke else ""), default))
    for k, (name, cfg) in enumerate(named):
        if over_budget(args, f"(a) {name}"):
            rows[name] = {"skipped": "over --budget-min"}
            continue
        rows[name] = guarded(lambda: time_step(files, cfg, tmp / f"step{k}", args.pool, args.rounds))
        r = rows[name]
        if "error" not in r:
            print(f"(a) {name:32s} {r['step_ms']:8.2f} ms/step  {r['structures_per_s']:9.0f} structures/s  "
                  f"{r['atoms_per_s']:10.0f} atoms/s  compilations {r['compilations_setup']}+"
                  f"{r['compilations_first_pass']}+{r['compilations_timed']} (set-up + first pass + timed), "
                  f"{r['train_step_shapes']} shape(s); first pass {r['first_pass_s']:.1f} s", flush=True)
        write(out, result)


# ----------------------------------------------------------------------------- (c), (e)


class LoopWaits:
    """Times the training loop's ``next()`` on its loader and on its batch supply, per
    ``run_epoch`` call (patches :mod:`mmlwf.training.engine` for the life of the context)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @staticmethod
    def _timed(it, row: dict, key: str, count: bool = False):
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                row[key] += time.perf_counter() - t
                return
            row[key] += time.perf_counter() - t
            if count:
                row["structures"] += int(np.count_nonzero(item["graph_mask"]))
            yield item

    @contextlib.contextmanager
    def patched(self):
        from mmlwf.training import engine

        orig_batches, orig_steps = engine.epoch_batches, engine._Run.steps
        waits = self

        def epoch_batches(loader, epoch, start):
            n, batches = orig_batches(loader, epoch, start)
            row = {"epoch": epoch, "loader_wait_s": 0.0, "supply_wait_s": 0.0, "structures": 0}
            waits.epochs.append(row)
            return n, waits._timed(iter(batches), row, "loader_wait_s", count=True)

        def steps(run, batches):
            return waits._timed(iter(orig_steps(run, batches)), waits.epochs[-1], "supply_wait_s")

        engine.epoch_batches, engine._Run.steps = epoch_batches, steps
        try:
            yield self
        finally:
            engine.epoch_batches, engine._Run.steps = orig_batches, orig_steps


def loader_shares(epochs: list[dict], history: list[dict]) -> dict:
    """(c) from the patched loop's per-epoch waits and the history's cost columns (epochs 2..)."""
    by_epoch: dict[int, dict] = {}  # history's epoch (from 1): the waits of its run_epoch calls (resumed: 2)
    for w in epochs:
        row = by_epoch.setdefault(w["epoch"] + 1, {"loader_wait_s": 0.0, "supply_wait_s": 0.0, "structures": 0})
        for key in row:
            row[key] += w[key]
    rows = []
    for h in history:
        w = by_epoch.get(int(h["epoch"]))
        rate = h.get("train_structures_per_s")
        if w is None:
            continue
        if not rate or not w["structures"]:
            continue
        train_s = w["structures"] / rate
        rows.append({"epoch": int(h["epoch"]), "train_s": train_s, "loader_wait_s": w["loader_wait_s"],
                     "supply_wait_s": w["supply_wait_s"], "structures_per_s": rate,
                     "atoms_per_s": h.get("train_atoms_per_s"), "xla_compilations": h.get("xla_compilations"),
                     "padding_efficiency": h.get("padding_efficiency")})
    steady = [r for r in rows if r["epoch"] >= 2]
    out = {"epochs": rows, "steady_epochs": len(steady)}
    if steady:
        train_s = sum(r["train_s"] for r in steady)
        out.update({"loader_wait_share": sum(r["loader_wait_s"] for r in steady) / train_s,
                    "supply_wait_share": sum(r["supply_wait_s"] for r in steady) / train_s,
                    "loop_structures_per_s": statistics.median(r["structures_per_s"] for r in steady),
                    "loop_atoms_per_s": statistics.median(r["atoms_per_s"] for r in steady if r["atoms_per_s"]),
                    "compilations_after_first_epoch": (steady[-1]["xla_compilations"] or 0)
                    - (rows[0]["xla_compilations"] or 0)})
    return out


def training_config(smoke: bool) -> dict:
    """(e)'s run config: the accuracy benchmark's (the project's defaults, no epoch limit); smoke:
    its narrower model, 2 epochs (the second is the first that (c) counts; --minutes a limit)."""
    from accuracy_rmd17 import SMOKE_MODEL, physnet_config

    return physnet_config(SMOKE_MODEL, {"max_epochs": 2}) if smoke else physnet_config()


def part_training(files: dict, args, tmp: Path, result: dict, out: Path) -> None:
    from accuracy_rmd17 import train_and_test

    from mmlwf.training.history import read_history
    from mmlwf.training.monitor import CompileCounter

    if over_budget(args, "(c)+(e) training", need_min=args.minutes):  # + the test pass
        result["training"] = {"skipped": "over --budget-min"}
        return
    config = training_config(args.smoke)
    data = {"train": files["train"], "test": files["test"], "split_npz": files["split_npz"], "stats": files["stats"]}
    run_dir = tmp / "run"
    waits = LoopWaits()
    compiles = CompileCounter()

    def run() -> dict:
        t0 = time.perf_counter()
        with waits.patched():
            curve = train_and_test(config, data, run_dir, args.minutes, 1)
        return {"config": config, "minutes": args.minutes, "element_energies": files["meta"]["element_energies"],
                "curve": curve, "wall_s": time.perf_counter() - t0, "compilations": compiles.count}

    result["training"] = guarded(run)
    write(out, result)
    hist = run_dir / "history.csv"
    if hist.exists():
        result["loader"] = guarded(lambda: loader_shares(waits.epochs, read_history(hist)))
        default = next((r for k, r in result.get("step", {}).items() if k.startswith("project default")), {})
        c = result["loader"]
        if "error" not in c and c.get("steady_epochs") and default.get("structures_per_s"):
            c["step_alone_structures_per_s"] = default["structures_per_s"]
            c["loop_over_step"] = c["loop_structures_per_s"] / default["structures_per_s"]
    else:
        result["loader"] = {"error": "no history.csv: the training did not finish an epoch"}
    t = result["training"]
    if "error" not in t and t["curve"]:
        last = t["curve"][-1]
        print(f"(e) training {last['minutes']:.1f} min, {last['epochs']} epochs: test energy MAE "
              f"{last['energy_mae_meV']:.2f} meV, force MAE {last['forces_mae_meV_per_A']:.2f} meV/Å", flush=True)
    c = result["loader"]
    if "error" not in c and c.get("steady_epochs"):
        print(f"(c) loop after epoch 1: {c['loop_structures_per_s']:.0f} structures/s; waiting for the loader "
              f"{100 * c['loader_wait_share']:.1f} %, for the batch supply {100 * c['supply_wait_share']:.1f} % "
              f"of the training loop", flush=True)
    write(out, result)


# ----------------------------------------------------------------------------- (d)


def part_ensemble(files: dict, args, result: dict, out: Path) -> None:
    """``benchmarks/ensemble_step.py`` as it is, its data path pointed at the carried xyz."""
    if over_budget(args, "(d) ensemble"):
        result["ensemble"] = {"skipped": "over --budget-min"}
        return

    def run() -> dict:
        import ensemble_step

        from mmlwf.training.monitor import CompileCounter

        ensemble_step.DATA = files["train_xyz"]
        argv, sys.argv = sys.argv, ["ensemble_step.py", *(["--smoke"] if args.smoke else [])]
        buf = io.StringIO()
        compiles = CompileCounter()
        try:
            with contextlib.redirect_stdout(buf):
                code = ensemble_step.main()
        finally:
            sys.argv = argv
        text = buf.getvalue()
        print("\n".join("    " + ln for ln in text.splitlines()[:-1]), flush=True)
        if code:
            raise RuntimeError(f"ensemble_step.main() returned {code}")
        got = json.loads(text.strip().splitlines()[-1])
        got["command"] = "python benchmarks/ensemble_step.py" + (" --smoke" if args.smoke else "")
        got["compilations"] = compiles.count
        for k in ("single", "ensemble"):
            got[f"{k}_structures_per_s"] = STEP_BATCH * 1e3 / got[f"{k}_ms"]  # its batches: 32 molecules
        return got

    result["ensemble"] = guarded(run)
    write(out, result)


# ----------------------------------------------------------------------------- helpers

_T0 = time.perf_counter()


def over_budget(args, what: str, need_min: float = 0.0) -> bool:
    spent = (time.perf_counter() - _T0) / 60
    if spent + need_min > args.budget_min:
        print(f"{what}: skipped, {spent:.1f} min spent (+{need_min:g}) of --budget-min {args.budget_min:g}", flush=True)
        return True
    return False


def guarded(fn) -> dict:
    """``fn()``, or ``{"error": ...}`` with the traceback printed (the other parts go on)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 (one part's failure must not lose the others' figures)
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def write(out: Path, result: dict) -> None:
    result["elapsed_s"] = time.perf_counter() - _T0
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, out / "gpu_check.json")


def fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def print_table(result: dict) -> None:
    env = result.get("environment", {})
    print(f"\ngpu_check: {env.get('device_kind')} ({env.get('platform')}), jax {env.get('jax')}, "
          f"jaxlib {env.get('versions', {}).get('jaxlib')}, flax {env.get('versions', {}).get('flax')}, "
          f"e3x {env.get('versions', {}).get('e3x')}")
    head = (f"{'train step (a, b)':40s} {'ms/step':>8s} {'structures/s':>12s} {'atoms/s':>10s} "
            f"{'compilations set-up+1st+timed':>29s} {'shapes':>6s}")
    print(head + "\n" + "-" * len(head))
    for name, r in result.get("step", {}).items():
        if "error" in r or "skipped" in r:
            print(f"{name:40s} {r.get('error') or r.get('skipped')}")
            continue
        compiles = f"{r['compilations_setup']}+{r['compilations_first_pass']}+{r['compilations_timed']}"
        print(f"{name:40s} {r['step_ms']:8.2f} {r['structures_per_s']:12.0f} {r['atoms_per_s']:10.0f} "
              f"{compiles:>29s} {r['train_step_shapes']:6d}")
    e = result.get("ensemble")
    if e:
        if "error" in e or "skipped" in e:
            print(f"{'ensemble (d)':40s} {e.get('error') or e.get('skipped')}")
        else:
            what = "ensemble_step.py" + (" --smoke" if result.get("smoke") else "")
            print(f"{'one model, ' + what + ' (d)':40s} {e['single_ms']:8.2f} {e['single_structures_per_s']:12.0f}")
            print(f"{'ensemble of %d, ' % e['members'] + what + ' (d)':40s} {e['ensemble_ms']:8.2f} "
                  f"{e['ensemble_structures_per_s']:12.0f}   ({e['ratio']:.2f}x one model)")
    c = result.get("loader")
    if c:
        if "error" in c or "skipped" in c or not c.get("steady_epochs"):
            print(f"loader (c): {c.get('error') or c.get('skipped') or 'no epoch after the first'}")
        else:
            vs = (f"; loop / step alone {c['loop_over_step']:.2f}" if c.get("loop_over_step") else "")
            print(f"loader (c), {c['steady_epochs']} epochs after the first: loop {c['loop_structures_per_s']:.0f} "
                  f"structures/s, {c['loop_atoms_per_s']:.0f} atoms/s; waiting for the loader "
                  f"{100 * c['loader_wait_share']:.1f} %, for the batch supply {100 * c['supply_wait_share']:.1f} % "
                  f"of the loop{vs}; compilations after epoch 1: {c['compilations_after_first_epoch']}")
    t = result.get("training")
    if t:
        if "error" in t or "skipped" in t or not t.get("curve"):
            print(f"training (e): {t.get('error') or t.get('skipped') or 'no epoch finished'}")
        else:
            last = t["curve"][-1]
            what = "smoke model" if result.get("smoke") else "project defaults"
            print(f"training (e), {what}, {fmt(last['minutes'], '.1f')} min, {last['epochs']} epochs: test "
                  f"energy MAE {last['energy_mae_meV']:.2f} meV, force MAE {last['forces_mae_meV_per_A']:.2f} meV/Å "
                  f"({last['n_test']} test structures)")


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="write --data from ../shared/data/mlff and stop")
    ap.add_argument("--data", type=Path, default=GPUDATA, help="the prepared data (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default: none written)")
    ap.add_argument("--parts", default="step,training,ensemble", help="which parts, in order (default %(default)s)")
    ap.add_argument("--pool", type=int, default=20, help="(a) batches per timed pass (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=10, help="(a) timed passes per config (default %(default)s)")
    ap.add_argument("--minutes", type=float, default=2.0, help="(e) training budget (default %(default)s)")
    ap.add_argument("--budget-min", type=float, default=6.5,
                    help="skip a part that would start after this many minutes (default %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, few steps, 2 epochs of training (CPU check)")
    ap.add_argument("--allow-cpu", action="store_true", help="run the full sizes without a GPU (default: stop)")
    args = ap.parse_args()
    if args.prepare:
        prepare_gpudata(args.data)
        return 0
    if args.smoke:  # no time budget: the CPU here is slow and shared
        args.pool, args.rounds, args.minutes, args.budget_min = 2, 2, 10.0, float("inf")
    files = load_gpudata(args.data)
    out = args.out or Path(tempfile.mkdtemp(prefix="mmlwf-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)

    result = {"benchmark": "gpu_check", "smoke": args.smoke,
              "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])}
    result["environment"] = guarded(environment)
    env = result["environment"]
    print(f"devices {env.get('devices')}; {json.dumps(env.get('versions'))}; python {env.get('python')}", flush=True)
    write(out, result)
    if env.get("platform") != "gpu" and not (args.smoke or args.allow_cpu):  # jax fell back to the CPU
        print(f"gpu_check: no GPU (jax.devices(): {env.get('devices') or env.get('error')}); stopping "
              "(--allow-cpu runs it anyway, --smoke is the CPU check)", file=sys.stderr)
        return 1
    parts = [p for p in args.parts.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="mmlwf-gpu-check-") as tmp:
        tmp = Path(tmp)
        for part in parts:
            if part == "step":
                part_step(files, args, tmp, result, out)
            elif part == "training":
                part_training(files, args, tmp, result, out)
            elif part == "ensemble":
                part_ensemble(files, args, result, out)
            else:
                raise SystemExit(f"unknown part {part!r} (step, training, ensemble)")
    write(out, result)
    print(json.dumps(result, default=str))
    print_table(result)  # last: the device tool's reply carries the end of the output
    if args.smoke:
        print("(smoke run: tiny models and a few steps on this machine; the figures mean nothing)")
    print(f"wrote {out / 'gpu_check.json'} after {result['elapsed_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
