"""A benchmark of this checkout against an earlier commit, built side by side and interleaved.

    python benchmarks/before_after.py --base 3d8f1e4 loader -- --molecules 20000 --epochs 3
    python benchmarks/before_after.py --base 3d8f1e4 --reps 5 train_step -- --data aspirin --aspirin 512

The earlier commit is checked out (``git worktree add --detach``) beside this checkout, so that
both find ``../shared``; each repetition runs ``benchmarks/<name>.py`` once from each tree (the
order alternating between repetitions, so neither always runs on a warmer or busier machine),
each tree's own script and package, with the same Python and arguments. The figures are read
from the JSON line the benchmark prints last. Printed: the median of each figure over the
repetitions for both trees and the ratio after / before (>1 is faster for rates, slower for
times), then one JSON line. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: per benchmark: figure name -> (reader of the benchmark's JSON, "rate" or "time")
FIGURES: dict[str, dict[str, tuple[Callable[[dict], float], str]]] = {
    "loader": {
        "synthetic atoms/s, no neighbour list": (lambda d: d["results"][0]["no_nl_atoms_per_s"], "rate"),
        "synthetic atoms/s, neighbour list 5 Å": (lambda d: d["results"][0]["nl_atoms_per_s"], "rate"),
        "synthetic first-epoch atoms/s, neighbour list": (
            lambda d: d["results"][0]["nl_first_epoch_atoms_per_s"], "rate"),
    },
    "train_step": {
        "steady structures/s (ours)": (lambda d: d["results"][0]["ours"]["steady_structures_per_s"], "rate"),
        "first epoch s (ours)": (lambda d: d["results"][0]["ours"]["first_epoch_seconds"], "time"),
    },
}


def checkout(base: str) -> Path:
    """A detached worktree of ``base`` beside this checkout (reused when present)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{base}^{{commit}}"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = REPO.parent / f".mmlwf-before-{sha[:10]}"
    if not (path / "benchmarks").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def run_once(tree: Path, name: str, args: list[str]) -> dict:
    """The last JSON line of ``benchmarks/<name>.py`` run from ``tree`` with its own package."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / f"{name}.py"), *args], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{tree.name}: benchmarks/{name}.py failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{tree.name}: benchmarks/{name}.py printed no JSON line")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per tree (default %(default)s)")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="flag a figure worse than this fraction (default %(default)s)")
    ap.add_argument("name", choices=sorted(FIGURES), help="the benchmark")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the benchmark (after --)")
    a = ap.parse_args()
    bench_args = a.args[1:] if a.args[:1] == ["--"] else a.args
    trees = {"before": checkout(a.base), "after": REPO}
    values: dict[str, dict[str, list[float]]] = {t: {f: [] for f in FIGURES[a.name]} for t in trees}
    for rep in range(a.reps):
        order = list(trees) if rep % 2 == 0 else list(reversed(trees))
        for which in order:
            data = run_once(trees[which], a.name, bench_args)
            for fig, (read, _) in FIGURES[a.name].items():
                values[which][fig].append(float(read(data)))
            print(f"rep {rep + 1}/{a.reps} {which}: " + ", ".join(
                f"{fig} {values[which][fig][-1]:.4g}" for fig in FIGURES[a.name]), flush=True)
    summary = {"benchmark": a.name, "args": bench_args, "base": a.base, "reps": a.reps, "figures": {}}
    print(f"\n{a.name} {' '.join(bench_args)}: median of {a.reps}, before = {a.base}, after = this checkout")
    for fig, (_, kind) in FIGURES[a.name].items():
        before, after = (statistics.median(values[t][fig]) for t in ("before", "after"))
        ratio = after / before
        worse = ratio < 1 - a.tolerance if kind == "rate" else ratio > 1 + a.tolerance
        print(f"  {fig:48s} before {before:10.4g}  after {after:10.4g}  after/before {ratio:.3f}"
              f"{f'  (worse by more than {a.tolerance:.0%})' if worse else ''}")
        summary["figures"][fig] = {"before": before, "after": after, "ratio": ratio, "kind": kind, "worse": worse,
                                   "values": {t: values[t][fig] for t in trees}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
