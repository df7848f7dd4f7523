#!/usr/bin/env python
"""Cost of verifying a packed dataset before training, against one training epoch.

``mmlwf train`` and ``mmlwf evaluate`` check every file of the dataset against the manifest's
SHA-256 (:func:`mmlwf.integrity.verify_dataset`). The target: at most 10 % of one training
epoch on the 20 M-atom benchmark dataset (the synthetic ANI-style input of
``benchmarks/convert.py``, converted with ``mmlwf convert``).

Measured here, in one process:

1. the dataset: ``benchmarks/convert.py``'s generator -> HDF5 -> :func:`mmlwf.convert.convert`
   (``--atoms``, default 20 M);
2. the first verification (every file hashed, nothing recorded yet; the files are in the page
   cache, having just been written: a cold read adds the I/O that the first epoch pays anyway)
   and the verification of the unchanged dataset (recorded: nothing re-hashed);
3. the training throughput: :func:`mmlwf.training.runner.run_training` with the default model
   on ``--epoch-structures`` structures of the same dataset for two epochs; the second epoch's
   wall time (no compilation) gives atoms/s, from which one epoch over the training split of
   the whole dataset (80 %) is estimated (the time per atom is constant at a fixed batch size);
4. the same epoch on a GPU at ``--gpu-atoms-per-s`` (default 1 M atoms/s, the rate
   ``docs/scaling.md`` assumes): the case where the verification weighs most.

Prints a summary and, last, one JSON line. Exit status 0 when the first verification stays
within 10 % of the GPU epoch estimate, 1 when it does not.

    python benchmarks/verify.py                                  # 20 M atoms (a few minutes)
    python benchmarks/verify.py --atoms 2000000 --epoch-structures 128
    python benchmarks/verify.py --smoke                          # tiny: fixed costs dominate
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

TARGET = 0.10  # verification / one training epoch
TRAIN_FRACTION = 0.8  # an 80/10/10 split


def _epoch_rate(ds: Path, workdir: Path, structures: int) -> dict:
    """Training atoms/s of the default model from the second of two epochs on ``structures``."""
    import numpy as np

    from mmlwf.packed import PackedDataset
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats
    from mmlwf.training.runner import run_training

    n = len(PackedDataset(ds))
    split_dataset(ds, workdir / "split.npz", valid=0, test=n - structures, seed=0)
    write_stats(compute_stats(ds, workdir / "split.npz"), workdir / "stats.json")
    run = workdir / "run"
    t0 = time.perf_counter()
    run_training({"training": {"max_epochs": 2}}, ds, workdir / "split.npz", workdir / "stats.json", run,
                 progress=False)
    total = time.perf_counter() - t0
    rows = list(csv.DictReader(open(run / "history.csv")))
    second = float(rows[1]["wall_time_s"]) - float(rows[0]["wall_time_s"])
    from mmlwf.split import load_split

    train = load_split(workdir / "split.npz").train
    atoms = int(np.asarray(PackedDataset(ds).n_atoms[train]).sum())
    return {"structures": structures, "atoms": atoms, "second_epoch_s": second, "two_epochs_wall_s": total,
            "atoms_per_s": atoms / second}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--atoms", type=int, default=20_000_000, help="atoms of the benchmark dataset (default 20 M)")
    p.add_argument("--epoch-structures", type=int, default=256,
                   help="training structures of the measured epochs (default %(default)s)")
    p.add_argument("--gpu-atoms-per-s", type=float, default=1e6,
                   help="training rate of the GPU estimate (default %(default)g, docs/scaling.md)")
    p.add_argument("--workdir", type=Path, help="default: a new temporary directory (removed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="200 000 atoms, 16 training structures (about two minutes)")
    args = p.parse_args(argv)
    if args.smoke:
        args.atoms, args.epoch_structures = 200_000, 16

    from convert import write_ani  # benchmarks/convert.py: the benchmark dataset's generator

    from mmlwf import integrity
    from mmlwf.convert import convert
    from mmlwf.packed import read_manifest

    made = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mmlwf-bench-verify-")) if made else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MMLWF_CACHE_DIR"] = str(workdir / "cache")  # a fresh record: the first run hashes
    try:
        src, ds = workdir / "synthetic.h5", workdir / "packed"
        print(f"writing {args.atoms} atoms ...", file=sys.stderr, flush=True)
        write_ani(src, args.atoms, args.seed, hartree=False)
        convert([src], ds, overwrite=True)
        src.unlink()
        data_bytes = sum(f.stat().st_size for f in ds.iterdir())
        time.sleep(integrity.RACY_S + 0.5)  # files older than the racy window: results are recorded

        t0 = time.perf_counter()
        first = integrity.verify_dataset(ds)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = integrity.verify_dataset(ds)
        t_again = time.perf_counter() - t0
        assert again.hashed == 0 and again.digest == first.digest

        print("training two epochs on a subset (the first one compiles) ...", file=sys.stderr, flush=True)
        rate = _epoch_rate(ds, workdir, args.epoch_structures)
        n_atoms = read_manifest(ds)["n_atoms"]
        epoch_atoms = TRAIN_FRACTION * n_atoms
        cpu_epoch = epoch_atoms / rate["atoms_per_s"]
        gpu_epoch = epoch_atoms / args.gpu_atoms_per_s
        result = {
            "machine": f"{platform.node()} ({os.cpu_count()} CPU cores)",
            "atoms": n_atoms,
            "dataset_bytes": data_bytes,
            "verify_first_s": round(t_first, 4),
            "verify_first_GB_per_s": round(first.hashed / t_first / 1e9, 3),
            "verify_recorded_s": round(t_again, 5),
            "training": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rate.items()},
            "epoch_cpu_s": round(cpu_epoch, 1),
            "epoch_gpu_estimate_s": round(gpu_epoch, 2),
            "ratio_first_vs_cpu_epoch": round(t_first / cpu_epoch, 6),
            "ratio_first_vs_gpu_epoch": round(t_first / gpu_epoch, 4),
            "ratio_recorded_vs_gpu_epoch": round(t_again / gpu_epoch, 6),
            "target": TARGET,
        }
        ok = result["ratio_first_vs_gpu_epoch"] <= TARGET
        print(f"dataset: {n_atoms} atoms, {data_bytes / 1e6:.0f} MB")
        print(f"first verification (all files hashed): {t_first:.3f} s ({result['verify_first_GB_per_s']} GB/s)")
        print(f"verification of the unchanged dataset (recorded): {t_again * 1e3:.2f} ms")
        print(f"training (default model, CPU): {rate['atoms_per_s']:.0f} atoms/s -> one epoch of "
              f"{epoch_atoms:.3g} atoms {cpu_epoch:.0f} s; ratio {result['ratio_first_vs_cpu_epoch']:.2e}")
        print(f"GPU estimate at {args.gpu_atoms_per_s:.3g} atoms/s: one epoch {gpu_epoch:.1f} s; ratio first "
              f"{result['ratio_first_vs_gpu_epoch']:.3f}, recorded {result['ratio_recorded_vs_gpu_epoch']:.1e} "
              f"(target <= {TARGET}): {'PASS' if ok else 'FAIL'}")
        print(json.dumps(result))
        return 0 if ok else 1
    finally:
        if made:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
