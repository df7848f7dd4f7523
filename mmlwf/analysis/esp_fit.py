"""Least-squares ESP charges: the textbook baseline a DCMNet must beat.

Per molecule, atom-centred point charges ``q`` minimise ``sum_g (V_g - sum_i k_e q_i /
|r_g - R_i|)²`` over the molecule's own grid points subject to ``sum_i q_i = Qtot``. The
constrained minimum solves the KKT system (Lagrange multiplier ``lam``)::

    [A^T A  1] [q  ]   [A^T V]
    [1^T    0] [lam] = [Qtot ]

All molecules are solved at once: the per-molecule normal matrices are padded to the largest
atom count (padding atoms get an identity row and a zero constraint column, so their charge
is 0) and solved with one batched ``numpy.linalg.solve`` in float64. Units: Å, e, V.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..constants import COULOMB_CONSTANT  # eV Å / e² (V = eV/e); imported from here by tests
from ..errors import DataError
from ..packed import PackedDataset


@dataclass
class EspFit:
    """Fitted charges of many molecules, concatenated like a packed dataset."""

    charges: np.ndarray  # (A,) e, atoms of molecule k at offsets[k]:offsets[k+1]
    offsets: np.ndarray  # (M+1,)
    esp_fit: np.ndarray  # (G,) V, the fitted charges' potential at the grid points
    grid_offsets: np.ndarray  # (M+1,)
    rmse_V: np.ndarray  # (M,) per-molecule RMSE of the fit, V
    sse_V2: float  # sum of squared errors over all points, V²
    n_points: int

    @property
    def rmse_total_V(self) -> float:
        """RMSE over all grid points of all molecules (V)."""
        return float(np.sqrt(self.sse_V2 / max(self.n_points, 1)))


def fit_charges(R, atom_offsets, grid, grid_offsets, esp, Qtot) -> EspFit:
    """Constrained least-squares atom-centred charges for every molecule.

    ``R (A,3)`` Å and ``atom_offsets (M+1,)``; ``grid (G,3)`` Å, ``esp (G,)`` V and
    ``grid_offsets (M+1,)``; ``Qtot (M,)`` e. Raises :class:`DataError` for a molecule
    without grid points or with a grid point on a nucleus.
    """
    R = np.asarray(R, np.float64)
    grid = np.asarray(grid, np.float64)
    esp = np.asarray(esp, np.float64)
    aoff = np.asarray(atom_offsets, np.int64)
    goff = np.asarray(grid_offsets, np.int64)
    Qtot = np.asarray(Qtot, np.float64).reshape(-1)
    M = aoff.shape[0] - 1
    n_at = np.diff(aoff)
    n_g = np.diff(goff)
    if goff.shape[0] != M + 1 or Qtot.shape[0] != M:
        raise DataError(f"{M} molecules but {goff.shape[0] - 1} grid offsets / {Qtot.shape[0]} total charges",
                        field="grid_offsets")
    if M and n_g.min() == 0:
        raise DataError("molecule without grid points", field="grid", index=int(np.argmin(n_g)))
    N = int(n_at.max()) if M else 0
    gmol = np.repeat(np.arange(M), n_g)  # molecule of each grid point
    slot = np.arange(N)
    valid = slot[None, :] < n_at[:, None]  # (M, N)
    atom_rows = np.where(valid, aoff[:-1, None] + slot[None, :], 0)  # (M, N) row into R
    # design matrix rows, padded to N atoms: A[g, i] = k_e / |r_g - R_i| (0 for padding)
    pos = R[atom_rows[gmol]]  # (G, N, 3)
    dist = np.linalg.norm(grid[:, None, :] - pos, axis=-1)
    vmask = valid[gmol]
    if np.any(vmask & (dist < 1e-8)):
        g = int(np.argwhere(vmask & (dist < 1e-8))[0, 0])
        raise DataError("grid point on a nucleus", field="grid", index=int(gmol[g]))
    A = np.where(vmask, COULOMB_CONSTANT / np.where(vmask, dist, 1.0), 0.0)
    starts = goff[:-1] - goff[0]  # every molecule has points: reduceat segments are exact
    AtA = np.add.reduceat(A[:, :, None] * A[:, None, :], starts, axis=0) if M else np.zeros((0, N, N))
    AtV = np.add.reduceat(A * esp[:, None], starts, axis=0) if M else np.zeros((0, N))

    K = np.zeros((M, N + 1, N + 1))
    K[:, :N, :N] = AtA
    K[:, :N, N] = valid
    K[:, N, :N] = valid
    pad = ~valid
    K[:, :N, :N][pad] = 0.0
    ii = np.nonzero(pad)
    K[ii[0], ii[1], ii[1]] = 1.0  # padding atoms: q = 0
    rhs = np.concatenate([AtV, Qtot[:, None]], axis=1)
    try:
        sol = np.linalg.solve(K, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        raise DataError("singular least-squares ESP fit (too few or degenerate grid points)", field="grid") from None
    q_pad = sol[:, :N]
    fitted = np.sum(A * q_pad[gmol], axis=1)
    err2 = (fitted - esp) ** 2
    rmse = np.sqrt(np.bincount(gmol, weights=err2, minlength=M) / np.maximum(n_g, 1))
    return EspFit(charges=q_pad[valid], offsets=aoff - aoff[0], esp_fit=fitted, grid_offsets=goff - goff[0],
                  rmse_V=rmse, sse_V2=float(err2.sum()), n_points=int(esp.shape[0]))


def fit_dataset(data: PackedDataset | str | os.PathLike, indices=None) -> EspFit:
    """:func:`fit_charges` for the molecules ``indices`` (default all) of a packed dataset
    with ``grid`` and ``esp`` fields."""
    ds = data if isinstance(data, PackedDataset) else PackedDataset(data)
    for name in ("grid", "esp"):
        if name not in ds.fields:
            raise DataError(f"dataset has no {name!r} field (an ESP dataset is needed)", path=ds.path, field=name)
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, np.int64)
    fields = ("R", "grid", "esp") + (("Qtot",) if "Qtot" in ds.fields else ())
    g = ds.gather(idx, fields=fields)
    Qtot = g["Qtot"] if "Qtot" in g else np.zeros(idx.shape[0])
    try:
        return fit_charges(g["R"], g["offsets"], g["grid"], g["grid_offsets"], g["esp"], Qtot)
    except DataError as exc:
        if exc.index is not None:  # position in indices -> structure index
            raise DataError(exc.message, path=ds.path, field=exc.field, index=int(idx[exc.index])) from None
        raise
