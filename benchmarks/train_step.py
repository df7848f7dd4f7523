"""PhysNet train steps: our batch pipeline against the approach in use today, in one process run.

    python benchmarks/train_step.py                    # real aspirin (3 000) + 20 000 mixed-size molecules
    python benchmarks/train_step.py --smoke            # 32 aspirin + 64 mixed molecules, tiny model
    python benchmarks/train_step.py --features 64 --iterations 3 --epochs 3

Both approaches train the same PhysNet (``max_degree`` 0, cutoff 5 Å) with the same jitted
optax-adam step (energy + force loss from masked sums, forces = -dE/dR by
:func:`mmlwf.models.physnet.energy_and_forces`); only the batches differ:

* ours: :class:`mmlwf.batching.BatchLoader` (pairs within the cutoff, a handful of fixed
  shapes, background assembly);
* today: ``PackedMemmapLoader(...).batches(physnet_format=True)`` (each batch padded to its
  largest molecule, every ordered pair within a molecule, so ``jax.jit`` compiles the step
  again for every new batch shape).

Reported per dataset and approach: the first-epoch wall time (from building the loader to the
end of the first epoch: pair counting, parameter initialisation and every compilation
included), the XLA compilations and train-step shapes, and the steady-state structures/s over
the epochs after the first. The two approaches run interleaved, in alternating blocks of
``--block`` batches, each block timed up to its last step's result, so that both see the same
load on a shared machine (``--sequential``: each first epoch in one go, one after the other);
an epoch's time is the sum of its blocks. Blocks after the first epoch that compiled (a
shape first met in a later epoch) are left out of the steady-state rate and counted. Then a
table and one JSON line with the ratios and the targets (first-epoch wall time, today / ours:
>= 1.2x on aspirin, >= 5x on mixed sizes). A tiny warm-up step first pays the process's
first-use costs (jax, flax, e3x, optax helpers), which would otherwise fall on whichever
approach runs first.

Data: rMD17 aspirin from ../shared/data/mlff (train + test files, 3 000 molecules, 21 atoms),
converted with :func:`mmlwf.convert.convert`; mixed sizes from
../shared/bench/make_synthetic_packed.py (5-60 atoms, Z 1-9, random energies and forces: only
the timing means anything). That script draws positions from a unit normal, which puts every
pair of a molecule within 2-3 Å; by default each molecule's positions are scaled by
``0.65 * n_atoms**(1/3)`` (constant density), which gives a 21-atom molecule the same share of
pairs within 5 Å as aspirin (72 %), and large molecules fewer, as in real ones.
``--density-scale 0`` keeps the raw positions (all pairs within the cutoff).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ASPIRIN = ("rmd17_aspirin_train.xyz", "rmd17_aspirin_test.xyz")
TARGETS = {"aspirin": 1.2, "mixed": 5.0}  # first-epoch wall time, today / ours

# ----------------------------------------------------------------------------- compilations

_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


class CompileLog:
    """Counts XLA compilations and sums tracing + lowering + compiling seconds (process-wide)."""

    def __init__(self) -> None:
        from jax import monitoring

        self._lock = threading.Lock()
        self.count = 0
        self.seconds = 0.0
        monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        kind = _COMPILE_EVENTS.get(event)
        if kind is None:
            return
        with self._lock:
            self.seconds += duration
            if kind == "compile":
                self.count += 1

    def snapshot(self) -> tuple[int, float]:
        with self._lock:
            return self.count, self.seconds


def cache_size(jitted) -> int | None:
    try:
        return int(jitted._cache_size())
    except Exception:  # noqa: BLE001 (private API)
        return None


# ----------------------------------------------------------------------------- data


def make_aspirin(out: Path) -> Path:
    from mmlwf.convert import convert

    sources = [SHARED / "data" / "mlff" / name for name in ASPIRIN]
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)}")
    convert(sources, out)
    return out


def make_mixed(n: int, out: Path, density_scale: float) -> Path:
    """``make_synthetic_packed.py n out``, then positions scaled by ``density_scale * n_atoms**(1/3)``."""
    script = SHARED / "bench" / "make_synthetic_packed.py"
    if not script.exists():
        raise SystemExit(f"needs {script}")
    subprocess.run([sys.executable, str(script), str(n), str(out)], check=True, capture_output=True)
    if density_scale > 0:
        n_atoms = np.load(out / "n_atoms.npy")
        R = np.memmap(out / "R_pack.f32", dtype=np.float32, mode="r+", shape=(int(n_atoms.sum()), 3))
        R *= np.repeat(density_scale * np.cbrt(n_atoms.astype(np.float64)), n_atoms).astype(np.float32)[:, None]
        R.flush()
        del R
    return out


def energy_per_atom(ds, indices: np.ndarray) -> float:
    """Mean energy per atom: the energy target is ``E - e * n_atoms`` (float64 on the host)."""
    E = np.asarray(ds.arrays["E"][indices], np.float64)
    n = np.asarray(ds.n_atoms[indices], np.float64)
    return float(np.sum(E) / np.sum(n))


def pair_stats(ds, indices: np.ndarray, cutoff: float) -> dict:
    from mmlwf.batching import count_pairs

    g = ds.gather(indices, fields=("R",))
    within = count_pairs(g["R"], g["offsets"], cutoff).astype(np.float64)
    n = np.asarray(g["n_atoms"], np.float64)
    every = n * (n - 1)
    return {"atoms_per_structure": float(n.mean()), "pairs_within_cutoff_per_structure": float(within.mean()),
            "all_pairs_per_structure": float(every.mean()), "share_within_cutoff": float(within.sum() / every.sum())}


# ----------------------------------------------------------------------------- batches


def ours_batches(loader, epoch: int, e_atom: float):
    for b in loader.epoch(epoch):
        gm = b["graph_mask"]
        E = np.where(gm, np.asarray(b["E"], np.float64) - e_atom * b["n_atoms"], 0.0).astype(np.float32)
        yield {
            "Z": b["Z"], "R": b["R"], "F": b["F"], "E": E, "Qtot": np.asarray(b["Qtot"], np.float32),
            "dst": b["dst"], "src": b["src"], "atom_graph": b["atom_graph"], "atom_mask": b["atom_mask"],
            "pair_mask": b["pair_mask"], "graph_mask": gm,
        }


def today_batches(loader, e_atom: float):
    for b in loader.batches(physnet_format=True):
        B = b["E"].shape[0]
        E = (np.asarray(b["E"], np.float64) - e_atom * b["N"]).astype(np.float32)
        yield {
            "Z": b["Z"], "R": b["R"], "F": b["F"], "E": E, "Qtot": np.asarray(b["Qtot"], np.float32),
            "dst": b["dst_idx"], "src": b["src_idx"], "atom_graph": b["batch_segments"],
            "atom_mask": b["atom_mask"], "pair_mask": b["batch_mask"], "graph_mask": np.ones(B, bool),
        }


# ----------------------------------------------------------------------------- the train step


def make_train_step(model, tx, force_weight: float):
    """``step(state, batch) -> (state, loss)``, jitted, state donated: energy + force MSE from
    masked sums, forces = -dE/dR, one optax update."""
    import jax
    import jax.numpy as jnp
    import optax

    from mmlwf.models.physnet import energy_and_forces

    def loss_fn(params, batch):
        out = energy_and_forces(model, params, batch)
        gm = batch["graph_mask"].astype(jnp.float32)
        am = batch["atom_mask"].astype(jnp.float32)
        dE = (out["energy"] - batch["E"]) * gm
        dF = (out["forces"] - batch["F"]) * am[:, None]
        e_mse = jnp.sum(dE * dE) / jnp.maximum(jnp.sum(gm), 1.0)
        f_mse = jnp.sum(dF * dF) / jnp.maximum(3.0 * jnp.sum(am), 1.0)
        return e_mse + force_weight * f_mse

    def step(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    return jax.jit(step, donate_argnums=(0,))


def warm_up(args) -> None:
    """One step of a tiny model on a tiny batch: the process's first-use costs (eager helper
    compilations in jax, flax, e3x and optax), so that they count for neither approach."""
    import jax
    import optax

    from mmlwf.models.physnet import build_model, init_params

    config = {**model_config(args), "features": 4, "num_iterations": 1}  # e3x's basis constants: same size
    model = build_model(config)
    tx = optax.adam(args.lr)
    rng = np.random.default_rng(0)
    batch = {
        "Z": np.array([6, 1, 1, 8, 1, 0], np.int32), "R": rng.standard_normal((6, 3)).astype(np.float32),
        "F": np.zeros((6, 3), np.float32), "E": np.zeros(3, np.float32), "Qtot": np.zeros(3, np.float32),
        "dst": np.array([0, 1, 0, 2, 3, 4], np.int32), "src": np.array([1, 0, 2, 0, 4, 3], np.int32),
        "atom_graph": np.array([0, 0, 0, 1, 1, 2], np.int32),
        "atom_mask": np.array([1, 1, 1, 1, 1, 0], bool), "pair_mask": np.ones(6, bool),
        "graph_mask": np.array([1, 1, 0], bool),
    }
    variables = init_params(model, jax.random.PRNGKey(0), batch)
    state = {"params": variables, "opt_state": jax.jit(tx.init)(variables)}
    state, loss = make_train_step(model, tx, args.force_weight)(state, batch)
    jax.block_until_ready(loss)


class Trainer:
    """One approach: its loader, model state and jitted step, trained in blocks of batches so
    that two approaches can run interleaved and see the same load of a shared machine.

    Per epoch: the time of its blocks (the first epoch also the set-up: loader, pair counts,
    parameter initialisation), compilations, loader waits, counts. Blocks stop at the end of
    an epoch. Steady state: the blocks after the first epoch that compiled nothing.
    """

    def __init__(self, approach: str, path: Path, indices: np.ndarray, args, log: CompileLog) -> None:
        self.approach, self.path, self.indices, self.args, self.log = approach, path, indices, args, log
        self.rows: list[dict] = []
        self.steady = {"seconds": 0.0, "structures": 0, "blocks": 0, "skipped_blocks": 0, "compilations": 0,
                       "compile_seconds": 0.0, "loader_wait_seconds": 0.0}
        self.epoch = 0
        self._batches = None
        self._pending = None

    def _epoch_batches(self, epoch: int):
        if self.approach == "ours":
            return ours_batches(self.loader, epoch, self.e_atom)
        return today_batches(self.loader, self.e_atom)  # reshuffles on every call

    @property
    def done(self) -> bool:
        return self.epoch >= self.args.epochs

    def setup(self) -> None:
        """Build the loader, take the first batch, initialise: timed into the first epoch."""
        import jax
        import optax

        from mmlwf.batching import BatchLoader
        from mmlwf.compat import PackedMemmapLoader
        from mmlwf.models.physnet import build_model, init_params
        from mmlwf.packed import PackedDataset

        args = self.args
        ds = PackedDataset(self.path)
        self.e_atom = energy_per_atom(ds, self.indices)
        model = build_model(model_config(args))
        tx = optax.adam(args.lr)

        c0, s0 = self.log.snapshot()
        t0 = time.perf_counter()
        if self.approach == "ours":
            self.loader = BatchLoader(ds, self.indices, batch_size=args.batch_size, cutoff=args.cutoff, seed=0)
        else:
            self.loader = PackedMemmapLoader(self.path, batch_size=args.batch_size, shuffle=True, seed=0,
                                             indices=self.indices)
        self._batches = self._epoch_batches(0)
        self._pending = next(self._batches)
        variables = init_params(model, jax.random.PRNGKey(0), self._pending)
        self.state = {"params": variables, "opt_state": jax.jit(tx.init)(variables)}
        self.step = make_train_step(model, tx, args.force_weight)
        jax.block_until_ready(self.state)
        c1, s1 = self.log.snapshot()
        self.setup_seconds = time.perf_counter() - t0
        self.setup_compilations = c1 - c0
        self._row = {"epoch": 0, "seconds": self.setup_seconds, "compilations": c1 - c0, "compile_seconds": s1 - s0,
                     "loader_wait_seconds": 0.0, "loss": None, **_counts()}

    def block(self, k: int) -> None:
        """Train up to ``k`` batches, stopping at the end of the epoch."""
        import jax

        if self.done:
            return
        c0, s0 = self.log.snapshot()
        t0 = time.perf_counter()
        if self._batches is None:
            self._batches = self._epoch_batches(self.epoch)
            self._row = {"epoch": self.epoch, "seconds": 0.0, "compilations": 0, "compile_seconds": 0.0,
                         "loader_wait_seconds": 0.0, "loss": None, **_counts()}
        row = self._row
        structures = 0
        wait = 0.0
        loss = None
        end = False
        for _ in range(k):
            if self._pending is not None:
                batch, self._pending = self._pending, None
            else:
                tw = time.perf_counter()
                batch = next(self._batches, None)
                wait += time.perf_counter() - tw
            if batch is None:
                end = True
                break
            self.state, loss = self.step(self.state, batch)
            _count(row, batch)
            structures += int(np.count_nonzero(batch["graph_mask"]))
        if loss is not None:
            row["loss"] = float(jax.block_until_ready(loss))
        dt = time.perf_counter() - t0
        c1, s1 = self.log.snapshot()
        row["seconds"] += dt
        row["compilations"] += c1 - c0
        row["compile_seconds"] += s1 - s0
        row["loader_wait_seconds"] += wait
        if self.epoch > 0:
            st = self.steady
            st["compilations"] += c1 - c0
            st["compile_seconds"] += s1 - s0
            if c1 > c0:
                st["skipped_blocks"] += 1
            elif structures:
                st["seconds"] += dt
                st["structures"] += structures
                st["loader_wait_seconds"] += wait
                st["blocks"] += 1
        if end:
            self.rows.append(row)
            self.epoch += 1
            self._batches = None

    def result(self) -> dict:
        first, st = self.rows[0], self.steady
        return {
            "approach": self.approach,
            "first_epoch_seconds": first["seconds"],
            "setup_seconds": self.setup_seconds,
            "setup_compilations": self.setup_compilations,
            "first_epoch_compilations": first["compilations"],
            "first_epoch_compile_seconds": first["compile_seconds"],
            "first_epoch_loader_wait_seconds": first["loader_wait_seconds"],
            "train_step_shapes": cache_size(self.step),
            "steady_structures_per_s": st["structures"] / st["seconds"] if st["seconds"] > 0 else None,
            "steady": dict(st),
            "structures_per_epoch": first["structures"],
            "batches_per_epoch": first["batches"],
            "atom_padding_efficiency": first["atoms"] / max(first["atom_slots"], 1),
            "pair_slots_per_structure": first["pair_slots"] / max(first["structures"], 1),
            "real_pairs_per_structure": first["pairs"] / max(first["structures"], 1),
            "epochs": self.rows,
        }


def _counts() -> dict:
    return {"structures": 0, "atoms": 0, "atom_slots": 0, "pairs": 0, "pair_slots": 0, "batches": 0}


def _count(n: dict, batch: dict) -> None:
    n["structures"] += int(np.count_nonzero(batch["graph_mask"]))
    n["atoms"] += int(np.count_nonzero(batch["atom_mask"]))
    n["pairs"] += int(np.count_nonzero(batch["pair_mask"]))
    n["atom_slots"] += batch["atom_mask"].shape[0]
    n["pair_slots"] += batch["pair_mask"].shape[0]
    n["batches"] += 1


def model_config(args) -> dict:
    return {"type": "physnet", "features": args.features, "max_degree": 0, "num_iterations": args.iterations,
            "num_basis_functions": args.basis, "cutoff": args.cutoff, "num_residual": args.residual}


# ----------------------------------------------------------------------------- report


def compare(name: str, path: Path, indices: np.ndarray, args, log: CompileLog) -> dict:
    from mmlwf.packed import PackedDataset

    stats = pair_stats(PackedDataset(path), indices, args.cutoff)
    print(f"\n{name}: {indices.shape[0]:,} structures, {stats['atoms_per_structure']:.1f} atoms and "
          f"{stats['pairs_within_cutoff_per_structure']:.0f} of {stats['all_pairs_per_structure']:.0f} ordered pairs "
          f"within {args.cutoff:g} Å ({100 * stats['share_within_cutoff']:.0f} %) per structure", flush=True)
    trainers = {a: Trainer(a, path, indices, args, log) for a in ("ours", "today")}
    for tr in trainers.values():  # ours first: it would pay any first-use cost the warm-up missed
        tr.setup()
    first_block = 1 << 62 if args.sequential else args.block
    while not all(tr.done for tr in trainers.values()):
        for tr in trainers.values():
            was_first = tr.epoch == 0
            tr.block(first_block if was_first else args.block)
            if was_first and tr.epoch == 1:
                r = tr.rows[0]
                print(f"  {tr.approach:5s} first epoch {r['seconds']:8.1f} s ({r['compilations']} XLA compilations, "
                      f"{r['compile_seconds']:.1f} s compiling; {cache_size(tr.step)} train-step shapes)", flush=True)
    results = {a: tr.result() for a, tr in trainers.items()}
    for a, r in results.items():
        st = r["steady"]
        print(f"  {a:5s} steady {r['steady_structures_per_s'] or float('nan'):7.1f} structures/s over "
              f"{st['blocks']} blocks of {args.block} batches ({st['skipped_blocks']} left out: they compiled, "
              f"{st['compilations']} compilations)", flush=True)
    ours, today = results["ours"], results["today"]
    key = "aspirin" if name.startswith("aspirin") else "mixed"
    first_ratio = today["first_epoch_seconds"] / ours["first_epoch_seconds"]
    steady_ratio = (ours["steady_structures_per_s"] / today["steady_structures_per_s"]
                    if ours["steady_structures_per_s"] and today["steady_structures_per_s"] else None)
    return {"data": key, "description": name, "structures": int(indices.shape[0]), **stats,
            "first_epoch_ratio": first_ratio, "steady_ratio": steady_ratio, "target_first_epoch_ratio": TARGETS[key],
            "target_met": first_ratio >= TARGETS[key], "ours": ours, "today": today}


def print_table(rows: list[dict]) -> None:
    head = (f"{'data':8s} {'approach':8s} {'1st epoch s':>11s} {'setup s':>8s} {'compiles':>8s} {'compile s':>9s} "
            f"{'shapes':>6s} {'loader wait s':>13s} {'pair slots/str':>14s} {'atom eff':>8s} {'steady str/s':>12s} "
            f"{'later compiles':>14s}")
    print("\n" + head)
    print("-" * len(head))
    for row in rows:
        for approach in ("ours", "today"):
            r = row[approach]
            steady = r["steady_structures_per_s"]
            print(f"{row['data']:8s} {approach:8s} {r['first_epoch_seconds']:11.1f} {r['setup_seconds']:8.1f} "
                  f"{r['first_epoch_compilations']:8d} {r['first_epoch_compile_seconds']:9.1f} "
                  f"{r['train_step_shapes'] if r['train_step_shapes'] is not None else -1:6d} "
                  f"{r['first_epoch_loader_wait_seconds']:13.1f} {r['pair_slots_per_structure']:14.0f} "
                  f"{r['atom_padding_efficiency']:8.2f} {steady if steady else float('nan'):12.1f} "
                  f"{r['steady']['compilations']:14d}")
        verdict = "met" if row["target_met"] else "MISSED"
        steady = f"{row['steady_ratio']:.2f}x" if row["steady_ratio"] else "n/a"
        print(f"{row['data']:8s} ratio    first epoch today/ours {row['first_epoch_ratio']:.2f}x "
              f"[target >= {row['target_first_epoch_ratio']}x: {verdict}]; steady-state ours/today {steady}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=20_000, help="mixed-size set size (default %(default)s)")
    ap.add_argument("--aspirin", type=int, default=0, help="use only the first N aspirin structures (0: all 3 000)")
    ap.add_argument("--batch-size", type=int, default=32, help="structures per batch (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs; steady state from the 2nd on (default %(default)s)")
    ap.add_argument("--features", type=int, default=32, help="PhysNet features (default %(default)s)")
    ap.add_argument("--iterations", type=int, default=2, help="PhysNet modules (default %(default)s)")
    ap.add_argument("--basis", type=int, default=16, help="radial basis functions (default %(default)s)")
    ap.add_argument("--residual", type=int, default=2, help="residual blocks per stack (default %(default)s)")
    ap.add_argument("--cutoff", type=float, default=5.0, help="Å (default %(default)s)")
    ap.add_argument("--block", type=int, default=8,
                    help="batches per block, the approaches alternating block by block (default %(default)s)")
    ap.add_argument("--sequential", action="store_true",
                    help="first epochs one after the other, each in one go (default: interleaved in blocks too)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--force-weight", type=float, default=10.0)
    ap.add_argument("--density-scale", type=float, default=0.65,
                    help="mixed set: positions x this x n_atoms^(1/3); 0 keeps the raw ones (default %(default)s)")
    ap.add_argument("--data", choices=("both", "aspirin", "mixed"), default="both")
    ap.add_argument("--smoke", action="store_true", help="32 aspirin + 64 mixed structures, tiny model")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary datasets go")
    args = ap.parse_args()
    if args.smoke:
        args.molecules, args.aspirin = 64, 32
        args.features, args.iterations, args.basis, args.residual = 8, 1, 4, 1
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the steady state is measured after the first)")

    import jax

    log = CompileLog()
    t = time.perf_counter()
    warm_up(args)
    print(f"warm-up (first-use costs of the process, counted for neither): {time.perf_counter() - t:.1f} s, "
          f"{log.snapshot()[0]} XLA compilations", flush=True)
    print(f"PhysNet {json.dumps(model_config(args))}; batch size {args.batch_size}; optax adam, "
          f"energy + {args.force_weight:g} x force loss; devices {jax.devices()}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmlwf-bench-train-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        if args.data in ("both", "aspirin"):
            path = make_aspirin(tmp / "aspirin")
            from mmlwf.packed import PackedDataset

            n = len(PackedDataset(path))
            indices = np.arange(min(args.aspirin, n) if args.aspirin else n, dtype=np.int64)
            rows.append(compare("aspirin (rMD17, 21 atoms)", path, indices, args, log))
        if args.data in ("both", "mixed"):
            path = make_mixed(args.molecules, tmp / "mixed", args.density_scale)
            scaled = (f"positions x {args.density_scale:g} n^(1/3)" if args.density_scale > 0
                      else "raw positions")
            rows.append(compare(f"mixed sizes (5-60 atoms, synthetic, {scaled})", path,
                                np.arange(args.molecules, dtype=np.int64), args, log))
    print_table(rows)
    if args.smoke:
        print("(smoke run: a batch or two per epoch, so the ratios and targets mean nothing here)")
    summary = {
        "benchmark": "train_step",
        "command": " ".join(["python", "benchmarks/train_step.py", *sys.argv[1:]]),
        "model": model_config(args),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "density_scale": args.density_scale,
        "devices": [str(d) for d in jax.devices()],
        "ratios": {r["data"]: {"first_epoch_today_over_ours": r["first_epoch_ratio"],
                               "steady_ours_over_today": r["steady_ratio"],
                               "target_first_epoch": r["target_first_epoch_ratio"], "met": r["target_met"]}
                   for r in rows},
        "results": rows,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
