"""Least-squares ESP charges (the DCMNet baseline): exact recovery, constraint, errors."""

import numpy as np
import pytest

from mmlwf.analysis.esp_fit import COULOMB_CONSTANT, fit_charges, fit_dataset
from mmlwf.errors import DataError
from mmlwf.packed import PackedWriter
from mmlwf.structure import Structure


def _molecule(rng, n, shell=(4.0, 6.0)):
    R = rng.normal(size=(n, 3)) * 1.2
    d = rng.normal(size=(30 * n, 3))
    grid = R.mean(0) + d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(*shell, (30 * n, 1))
    return R, grid


def _potential(q, pos, grid):
    return COULOMB_CONSTANT * np.sum(q / np.linalg.norm(grid[:, None] - pos[None], axis=-1), axis=1)


def _concat(mols):
    R = np.concatenate([m[0] for m in mols])
    grid = np.concatenate([m[1] for m in mols])
    esp = np.concatenate([m[2] for m in mols])
    aoff = np.concatenate([[0], np.cumsum([len(m[0]) for m in mols])])
    goff = np.concatenate([[0], np.cumsum([len(m[1]) for m in mols])])
    return R, aoff, grid, goff, esp


def test_recovers_atom_centred_charges_exactly_with_the_constraint():
    rng = np.random.default_rng(0)
    mols, truth, Q = [], [], []
    for n in (1, 3, 5, 2):  # different atom counts: padding inside the batched solve
        R, grid = _molecule(rng, n)
        q = rng.normal(size=n)
        mols.append((R, grid, _potential(q, R, grid)))
        truth.append(q)
        Q.append(q.sum())
    fit = fit_charges(*_concat(mols), np.array(Q))
    np.testing.assert_allclose(fit.charges, np.concatenate(truth), atol=1e-6)
    np.testing.assert_allclose(fit.rmse_V, 0.0, atol=1e-6)
    for k, q in enumerate(Q):
        assert fit.charges[fit.offsets[k]:fit.offsets[k + 1]].sum() == pytest.approx(q, abs=1e-10)


def test_constraint_holds_when_the_potential_cannot_be_fitted():
    rng = np.random.default_rng(1)
    R, grid = _molecule(rng, 3)
    # off-centre charges: atom-centred ones cannot reproduce this, but the sum is imposed
    esp = _potential(np.array([0.7, -0.2, -0.1]), R + 0.3, grid) + rng.normal(0, 0.01, len(grid))
    for Q in (-1.0, 0.0, 2.5):
        fit = fit_charges(R, [0, 3], grid, [0, len(grid)], esp, [Q])
        assert fit.charges.sum() == pytest.approx(Q, abs=1e-10)
    unconstrained_best = fit_charges(R, [0, 3], grid, [0, len(grid)], esp, [0.4])
    assert unconstrained_best.rmse_V[0] > 0
    assert unconstrained_best.rmse_total_V == pytest.approx(unconstrained_best.rmse_V[0])
    # a shifted constraint fits worse than the (nearly) natural one
    assert fit_charges(R, [0, 3], grid, [0, len(grid)], esp, [2.5]).rmse_V[0] > unconstrained_best.rmse_V[0]


def test_fit_dataset_and_bad_input(tmp_path):
    rng = np.random.default_rng(2)
    truth = []
    with PackedWriter(tmp_path / "ds") as w:
        for i in range(4):
            R, grid = _molecule(rng, 3, shell=(3.0, 4.0))
            q = rng.normal(size=3)
            q += (i % 2 - q.sum()) / 3  # Qtot 0 or 1
            truth.append(q)
            w.add(Structure(Z=np.array([8, 1, 1]), R=R, E=0.0, Qtot=float(i % 2), grid=grid,
                            esp=_potential(q, R, grid), index=i).checked("t"))
    fit = fit_dataset(tmp_path / "ds", [3, 1])
    # float32 storage of grid and ESP limits the recovery
    np.testing.assert_allclose(fit.charges, np.concatenate([truth[3], truth[1]]), atol=2e-3)
    assert fit.rmse_V.max() < 1e-4 and list(fit.offsets) == [0, 3, 6]
    with pytest.raises(DataError, match="grid point on a nucleus"):
        fit_charges(np.zeros((1, 3)), [0, 1], np.zeros((2, 3)), [0, 2], np.ones(2), [0.0])
    with pytest.raises(DataError, match="without grid points"):
        fit_charges(np.zeros((1, 3)), [0, 1], np.zeros((0, 3)), [0, 0], np.ones(0), [0.0])
