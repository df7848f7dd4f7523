"""The installed environment is the locked one: uv.lock, requirements.lock.txt and envs/*.yaml agree."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "devtools"))
import conda_pins  # noqa: E402


def test_lock_is_current_with_pyproject():
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists():
        pytest.fail("uv not found: it is in the dev group, so `uv run pytest` has it")
    out = subprocess.run([uv, "lock", "--check", "--offline"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_requirements_export_pins_the_locked_versions():
    locked = conda_pins.locked_versions()
    text = (REPO / "requirements.lock.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.M))
    assert len(pins) > 50
    for name, version in pins.items():
        assert locked[conda_pins._norm(name)] == version, name
    assert text.count("--hash=sha256:") >= len(pins)  # pip's hash-checking mode


def test_conda_envs_pin_the_locked_versions():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        _, diffs = conda_pins.pinned_lines(env.read_text(), conda_pins.locked_versions())
        assert not diffs, f"{env.name}: {diffs} (run python devtools/conda_pins.py)"


def test_pin_check_notices_a_drifted_pin():
    text = "dependencies:\n  - numpy =1.0.0\n  - pip\n  - pip:\n      - e3x >=1.0\n"
    new, diffs = conda_pins.pinned_lines(text, {"numpy": "2.4.6", "e3x": "1.0.2"})
    assert len(diffs) == 2
    assert "  - numpy =2.4.6" in new and "      - e3x ==1.0.2" in new


def test_cuda_env_names_the_cuda_build_of_the_locked_jax():
    text = (REPO / "envs" / "train-cuda.yaml").read_text()
    assert f"jax[cuda12] =={conda_pins.locked_versions()['jax']}" in text


@pytest.mark.parametrize("name", ["jax", "jaxlib", "flax", "e3x", "orbax-checkpoint", "numpy", "snakemake"])
def test_this_environment_is_the_locked_one(name):
    """The tests run in what the lock says (CI builds a fresh environment from it)."""
    assert importlib.metadata.version(name) == conda_pins.locked_versions()[name]
