"""benchmarks/gpu_check.py without a GPU: its device command, its wheel pins, its loader shares.

The script itself runs only by hand (``--smoke``: some 10 minutes on 2 busy cores)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def _command(text: str) -> str:
    (line,) = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("python3 -m pip install")]
    return line


def test_the_device_command_is_one_and_fits():
    doc = _command(gpu_check.__doc__)
    assert doc == _command((REPO / "docs" / "gpu.md").read_text())
    assert len(doc) <= 2000  # the device tool's limit
    assert "--target /tmp/site .whl/*.whl" in doc and "PYTHONUNBUFFERED=1" in doc
    assert "benchmarks/gpu_check.py --out $OUT" in doc


def test_the_wheels_are_pinned_to_the_lock():
    script = (REPO / "benchmarks" / "gpu_wheels.sh").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+)$", script, re.M))
    assert {"e3x", "ase", "pydantic", "pydantic-core", "jsonschema"} <= set(pins)
    lock = dict(re.findall(r'^name = "([^"]+)"\nversion = "([^"]+)"', (REPO / "uv.lock").read_text(), re.M))
    assert {name: lock.get(name) for name in pins} == pins


def test_loader_shares_count_the_epochs_after_the_first():
    # run_epoch calls: epoch 0 (compiles), epoch 1 in two parts (interrupted, resumed), epoch 2
    waits = [{"epoch": 0, "loader_wait_s": 5.0, "supply_wait_s": 6.0, "structures": 100},
             {"epoch": 1, "loader_wait_s": 0.5, "supply_wait_s": 1.0, "structures": 40},
             {"epoch": 1, "loader_wait_s": 0.5, "supply_wait_s": 1.0, "structures": 60},
             {"epoch": 2, "loader_wait_s": 1.0, "supply_wait_s": 2.0, "structures": 100}]
    history = [{"epoch": 1, "train_structures_per_s": 10.0, "train_atoms_per_s": 210.0, "xla_compilations": 12},
               {"epoch": 2, "train_structures_per_s": 20.0, "train_atoms_per_s": 420.0, "xla_compilations": 12},
               {"epoch": 3, "train_structures_per_s": 10.0, "train_atoms_per_s": 210.0, "xla_compilations": 13}]
    got = gpu_check.loader_shares(waits, history)
    assert got["steady_epochs"] == 2
    assert got["epochs"][1]["train_s"] == pytest.approx(5.0)  # 100 structures at 20/s
    assert got["loader_wait_share"] == pytest.approx(2.0 / 15.0)
    assert got["supply_wait_share"] == pytest.approx(4.0 / 15.0)
    assert got["compilations_after_first_epoch"] == 1
