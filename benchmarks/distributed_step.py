"""Training across processes on the CPU: ``mmlwf train --num-processes 2`` against one process
with two devices (the same global batches and steps), end to end through the CLI.

    PYTHONPATH=. python benchmarks/distributed_step.py [--epochs 4] [--out DIR]

A tiny PhysNet on synthetic water and methane (tests/test_training.make_data: 3- and 5-atom
molecules in every batch). Prints both runs' loss curves (they must agree to float32
rounding: the psum-ed sums are the same sums in another order) and the seconds per epoch
after the first (compiling) one, i.e. the cost of the gloo collectives and of two processes
sharing the CPU cores against one process driving two host devices.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = {"type": "physnet", "features": 16, "num_iterations": 2, "num_basis_functions": 8, "num_residual": 1,
         "cutoff": 3.0}


def train(out: Path, data: Path, epochs: int, processes: int) -> tuple[float, list[dict]]:
    """Wall seconds and history rows of one ``mmlwf train`` (1 process, 2 devices, or ``processes``)."""
    from mmlwf.training import read_history

    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    if processes == 1:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sets = [f"model.{k}={v}" for k, v in MODEL.items()] + [
        f"training.max_epochs={epochs}", "training.batch_size=8", "training.seed=0"]
    cmd = [sys.executable, "-m", "mmlwf.cli", "train", "--data", str(data / "packed"), "--split",
           str(data / "split.npz"), "--stats", str(data / "stats.json"), "-o", str(out)]
    for s in sets:
        cmd += ["--set", s]
    if processes > 1:
        cmd += ["--num-processes", str(processes)]
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.monotonic() - t0, read_history(out / "history.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from tests.test_training import make_data

    out = args.out or Path(tempfile.mkdtemp(prefix="mmlwf-distributed-"))
    data = make_data(out / "data")
    runs = {name: train(out / name, data, args.epochs, n) for name, n in (("1 process, 2 devices", 1),
                                                                          ("2 processes", 2))}
    print(f"{'epoch':>5} " + " ".join(f"{n + ' ' + k:>36}" for n in runs for k in ("train", "valid")))
    for rows in zip(*(h for _, h in runs.values())):
        print(f"{rows[0]['epoch']:>5} " + " ".join(f"{r[k]:>36.7g}" for r in rows for k in ("train_loss",
                                                                                           "valid_loss")))
    for name, (wall, hist) in runs.items():
        per_epoch = (hist[-1]["wall_time_s"] - hist[0]["wall_time_s"]) / max(len(hist) - 1, 1)
        print(f"{name}: {wall:.1f} s in all, {per_epoch:.2f} s per epoch after the first "
              f"({hist[-1]['step']} steps in {len(hist)} epochs)")
    worst = max(abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(*(h for _, h in runs.values()))
                for k in ("train_loss", "valid_loss"))
    print(f"largest relative difference of the loss curves: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
