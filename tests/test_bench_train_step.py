"""Smoke run of benchmarks/train_step.py: both approaches train, the report has the ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.mark.slow  # ~20 XLA compilations of train steps: ~50 s on 2 idle cores
def test_train_step_benchmark_smoke(tmp_path):
    needed = [SHARED / "bench" / "make_synthetic_packed.py",
              SHARED / "data" / "mlff" / "rmd17_aspirin_train.xyz", SHARED / "data" / "mlff" / "rmd17_aspirin_test.xyz"]
    if not all(p.exists() for p in needed):
        pytest.skip("needs ../shared/bench and ../shared/data/mlff")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--smoke", "--workdir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "train_step"
    assert set(summary["ratios"]) == {"aspirin", "mixed"}
    for row in summary["results"]:
        ours, today = row["ours"], row["today"]
        for r in (ours, today):
            assert r["structures_per_epoch"] == row["structures"]
            assert r["first_epoch_seconds"] > 0 and r["steady_structures_per_s"] > 0
            assert r["first_epoch_compilations"] >= 1
        # the same molecules, each batch with pairs within the cutoff only vs every pair
        assert ours["real_pairs_per_structure"] == pytest.approx(row["pairs_within_cutoff_per_structure"])
        assert today["real_pairs_per_structure"] == pytest.approx(row["all_pairs_per_structure"])
    assert list(tmp_path.iterdir()) == []  # temporary datasets removed
