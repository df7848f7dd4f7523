"""Shared fixtures: the real reference data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMLWF_SHARED_DATA", REPO.parent / "shared" / "data"))
MLFF = SHARED_DATA / "mlff"


@pytest.fixture(autouse=True, scope="session")
def _verification_records(tmp_path_factory):
    """Checksum verification records (mmlwf.integrity) in a temporary folder, not ~/.cache."""
    old = os.environ.get("MMLWF_CACHE_DIR")
    os.environ["MMLWF_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmlwf-cache"))
    yield
    if old is None:
        os.environ.pop("MMLWF_CACHE_DIR", None)
    else:
        os.environ["MMLWF_CACHE_DIR"] = old


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data/mlff, skipping the test when it is absent."""
    path = MLFF / name
    if not path.exists():
        pytest.skip(f"reference data {path} not present (../shared/data is not beside the repo)")
    return path


@pytest.fixture
def water_structures():
    """A few distorted water molecules with energies, forces and dipoles (eV, Å)."""
    from mmlwf.structure import Structure

    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    out = []
    for i in range(10):
        out.append(
            Structure(
                Z=np.array([8, 1, 1]),
                R=base + 0.05 * rng.standard_normal((3, 3)),
                E=-14.0 + 0.1 * rng.standard_normal(),
                F=rng.standard_normal((3, 3)),
                D=rng.standard_normal(3),
                index=i,
            )
        )
    return out


@pytest.fixture
def x64():
    """jax_enable_x64 on for one test (float64 checks), restored afterwards."""
    import jax

    with jax.enable_x64(True):
        yield
