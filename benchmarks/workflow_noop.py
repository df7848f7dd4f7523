"""Time of a no-op re-run (``snakemake -n`` after a complete run) for a 100-experiment sweep.

Runs the workflow once to completion in a temporary directory on a tiny demo dataset with a
sweep of ``--experiments`` tiny PhysNet trainings (one epoch each), then times ``snakemake -n``
``--repeats`` times and prints the median (target: under 5 s for 100 experiments). With
``--default-config`` it also runs the repository's own config.yaml to completion and times
its no-op re-run (that takes as long as the demo itself).

    python benchmarks/workflow_noop.py [--experiments 100] [--default-config] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sweep_config(n_experiments: int, threads: int = 1) -> dict:
    seeds = list(range(max(n_experiments // 4, 1)))
    grid = {"training.seed": seeds, "training.learning_rate": [1.0e-3, 2.0e-3], "model.features": [4, 8]}
    return {
        "demo": {"molecules": ["H2O", "CH4"], "n_per_molecule": 6, "steps_between": 5, "teacher": "gfn2-xtb"},
        "datasets": {"demo": {"sources": ["results/demo/demo.extxyz"], "split": {"valid": 2, "test": 2}}},
        "experiments": {},
        "sweeps": {"scan": {"dataset": "demo", "threads": threads,
                            "model": {"type": "physnet", "num_iterations": 1, "num_basis_functions": 4},
                            "training": {"batch_size": 4, "max_epochs": 1},
                            "grid": grid}},
    }


def n_of(cfg: dict) -> int:
    return 4 * len(cfg["sweeps"]["scan"]["grid"]["training.seed"])


def snakemake(workdir: Path, *args: str, config: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    if config is not None:
        cmd += ["--configfile", str(config), "--replace-workflow-config"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc


def noop_times(workdir: Path, repeats: int, config: Path | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        elapsed, proc = snakemake(workdir, "-n", config=config)
        if "Nothing to be done" not in proc.stdout + proc.stderr:
            sys.exit(f"the re-run planned jobs:\n{(proc.stdout + proc.stderr)[-3000:]}")
        times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100, help="sweep size (a multiple of 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--default-config", action="store_true", help="also time the repository's config.yaml")
    parser.add_argument("--threads", type=int, default=1, help="threads per training (1: two jobs at once on 2 cores)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    result = {}
    with tempfile.TemporaryDirectory(prefix="mmlwf-noop-") as tmp:
        work = args.workdir or Path(tmp) / "sweep"
        work.mkdir(parents=True, exist_ok=True)
        cfg = sweep_config(args.experiments, args.threads)
        config = work / "sweep.yaml"
        config.write_text(yaml.safe_dump(cfg))
        # the data steps first, then the time of a dry run that plans every training (an upper
        # bound of the no-op: the same DAG, plus printing 2 jobs per experiment)
        snakemake(work, "results/datasets/demo/stats.json", config=config)
        plan, _ = snakemake(work, "-n", config=config)
        result["planning_dry_run_s"] = round(plan, 3)
        print(f"dry run planning {2 * n_of(cfg) + 1} jobs: {plan:.2f} s")
        full, _ = snakemake(work, config=config)
        times = noop_times(work, args.repeats, config=config)
        n = n_of(cfg)
        result["sweep"] = {"experiments": n, "full_run_s": round(full, 1),
                           "noop_median_s": round(statistics.median(times), 3),
                           "noop_times_s": [round(t, 3) for t in times]}
        print(f"{n}-experiment sweep: full run {full:.0f} s; no-op re-run (snakemake -n) median "
              f"{statistics.median(times):.2f} s over {len(times)} (target < 5 s)")
        if args.default_config:
            work = Path(tmp) / "default"
            work.mkdir()
            full, _ = snakemake(work, config=REPO / "config.yaml")
            times = noop_times(work, args.repeats, config=REPO / "config.yaml")
            result["default"] = {"full_run_s": round(full, 1), "noop_median_s": round(statistics.median(times), 3),
                                 "noop_times_s": [round(t, 3) for t in times]}
            print(f"default config: full run {full:.0f} s; no-op re-run median {statistics.median(times):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
