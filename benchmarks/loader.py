"""Batch loader against the baseline seed loader, in one process run.

    python benchmarks/loader.py                 # 200k synthetic molecules + real aspirin
    python benchmarks/loader.py --smoke         # 5k synthetic molecules, seconds
    python benchmarks/loader.py --memory 2000000   # also: one epoch over 2M molecules, peak RssAnon

Targets (issue "Splits, statistics and a batch pipeline"): without neighbour lists >= 10x the
baseline's atoms/s; with neighbour lists (5 Å) >= 2x; atom padding efficiency >= 0.90, pair
padding efficiency >= 0.85 with <= 4 shapes per epoch; < 1 GB peak RssAnon over 2M molecules.
Needs ../shared/bench (the baseline and the synthetic-data maker) and ../shared/data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_baseline():
    path = SHARED / "bench" / "baseline_seed_loader.py"
    spec = importlib.util.spec_from_file_location("baseline_seed_loader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PackedMemmapLoader


def run_baseline(path: Path, batch_size: int) -> dict:
    loader = load_baseline()(str(path), batch_size=batch_size)
    t = time.perf_counter()
    mols = real = slots = 0
    shapes = set()
    for b in loader.batches():
        mols += b["Z"].shape[0]
        real += int(b["mask"].sum())
        slots += b["mask"].size
        shapes.add(b["Z"].shape)
    dt = time.perf_counter() - t
    return {"atoms_per_s": real / dt, "molecules_per_s": mols / dt, "padding_efficiency_atoms": real / slots,
            "n_shapes": len(shapes), "seconds": dt}


def run_ours(path: Path, cutoff: float | None, batch_size: int, epochs: int, prefetch: int) -> dict:
    from mmlwf.bench import bench_loader

    return bench_loader(path, cutoff=cutoff, batch_size=batch_size, epochs=epochs, prefetch=prefetch)


def compare(name: str, path: Path, batch_size: int, epochs: int) -> dict:
    base = run_baseline(path, batch_size)
    # assembly alone in the consuming thread, like the baseline; neighbour lists with the
    # default background assembly (2 threads: the compiled pair search releases the GIL)
    plain = run_ours(path, None, batch_size, epochs, prefetch=0)
    nl = run_ours(path, 5.0, batch_size, epochs, prefetch=4)
    row = {
        "data": name,
        "baseline_atoms_per_s": base["atoms_per_s"],
        "baseline_n_shapes": base["n_shapes"],
        "baseline_padding_efficiency_atoms": base["padding_efficiency_atoms"],
        "no_nl_atoms_per_s": plain["atoms_per_s"],
        "no_nl_first_epoch_atoms_per_s": plain["first_epoch_atoms_per_s"],
        "nl_atoms_per_s": nl["atoms_per_s"],
        "nl_first_epoch_atoms_per_s": nl["first_epoch_atoms_per_s"],
        "nl_setup_seconds": nl["setup_seconds"],
        "nl_pairs_per_s": nl["pairs_per_s"],
        "ratio_no_nl": plain["atoms_per_s"] / base["atoms_per_s"],
        "ratio_nl": nl["atoms_per_s"] / base["atoms_per_s"],
        "padding_efficiency_atoms": nl["padding_efficiency_atoms"],
        "padding_efficiency_pairs": nl["padding_efficiency_pairs"],
        "n_shapes": max(plain["n_shapes"], nl["n_shapes"]),
        "peak_anon_mb": max(plain["peak_anon_mb"], nl["peak_anon_mb"]),
    }
    print(f"\n{name}: baseline {base['atoms_per_s'] / 1e6:.2f} M atoms/s, {base['n_shapes']} distinct shapes, "
          f"padding efficiency {base['padding_efficiency_atoms']:.3f}")
    print(f"  ours, no neighbour list: {plain['atoms_per_s'] / 1e6:.2f} M atoms/s "
          f"(first epoch {plain['first_epoch_atoms_per_s'] / 1e6:.2f}) -> {row['ratio_no_nl']:.1f}x  [target >= 10x]")
    print(f"  ours, neighbour list 5 Å: {nl['atoms_per_s'] / 1e6:.2f} M atoms/s "
          f"(first epoch {nl['first_epoch_atoms_per_s'] / 1e6:.2f}; set-up {nl['setup_seconds']:.2f} s), "
          f"{nl['pairs_per_s'] / 1e6:.0f} M pairs/s -> {row['ratio_nl']:.1f}x  [target >= 2x]")
    print(f"  padding efficiency atoms {row['padding_efficiency_atoms']:.3f} [>= 0.90], pairs "
          f"{row['padding_efficiency_pairs']:.3f} [>= 0.85]; {row['n_shapes']} shapes per epoch [<= 4] "
          f"(baseline {base['n_shapes']})")
    return row


def memory_check(n: int, workdir: Path) -> dict:
    path = workdir / f"synthetic-{n}"
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_synthetic_packed.py"), str(n), str(path)], check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-m", "mmlwf.cli", "bench", "loader", str(path), "--json", "--epochs", "1"],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    print(f"\none epoch over {n:,} molecules (neighbour lists 5 Å): peak RssAnon {result['peak_anon_mb']:.0f} MB "
          f"[< 1024 MB]; {result['first_epoch_seconds']:.1f} s, set-up {result['setup_seconds']:.1f} s")
    return {"molecules": n, "peak_anon_mb": result["peak_anon_mb"], "epoch_seconds": result["first_epoch_seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=200_000, help="synthetic dataset size (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=128, help="as the baseline's (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=5, help="our epochs; rates from epochs 2.. (default %(default)s)")
    ap.add_argument("--memory", type=int, default=0, metavar="N", help="also one epoch over N synthetic molecules")
    ap.add_argument("--smoke", action="store_true", help="5 000 molecules, no aspirin, no memory check")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if not (SHARED / "bench").exists():
        print(f"needs {SHARED / 'bench'}", file=sys.stderr)
        return 2
    n = 5000 if args.smoke else args.molecules
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmlwf-bench-loader-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        synth = tmp / "synthetic"
        subprocess.run([sys.executable, str(SHARED / "bench" / "make_synthetic_packed.py"), str(n), str(synth)],
                       check=True, capture_output=True)
        rows.append(compare(f"synthetic {n:,} molecules (5-60 atoms)", synth, args.batch_size, args.epochs))
        aspirin = [SHARED / "data" / "mlff" / f for f in ("rmd17_aspirin_train.xyz", "rmd17_aspirin_test.xyz")]
        if not args.smoke and all(p.exists() for p in aspirin):
            from mmlwf.convert import convert

            convert(aspirin, tmp / "aspirin")
            rows.append(compare("rMD17 aspirin (3 000 molecules, 21 atoms)", tmp / "aspirin", args.batch_size, args.epochs))
        memory = memory_check(args.memory, tmp) if args.memory and not args.smoke else None
    print(json.dumps({"benchmark": "loader", "results": rows, "memory": memory}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
