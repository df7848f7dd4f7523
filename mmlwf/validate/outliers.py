"""Robust outliers: a per-element linear fit of the energies, and median/MAD z-scores."""

from __future__ import annotations

import numpy as np

from ..packed import MAX_Z, PackedDataset
from .chunks import Chunk, batches

MIN_FIT_STRUCTURES = 10  # fewer usable structures: no energy/force outlier check
SCALE_FLOOR = 1e-6  # smallest robust scale (eV/atom, eV/Å): round-off is never an outlier
_COLUMNS = MAX_Z + 1  # element-count columns, by atomic number (0: unused molecules)


class EnergyFit:
    """Least squares of E on element counts, accumulated as normal equations per chunk."""

    def __init__(self, n_molecules: int) -> None:
        self.n_molecules = n_molecules
        self.XtX = np.zeros((_COLUMNS, _COLUMNS))
        self.Xty = np.zeros(_COLUMNS)
        self.n_used = 0
        self.weights: np.ndarray | None = None
        self.residuals: np.ndarray | None = None

    @staticmethod
    def _counts(ch: Chunk, Z: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element-count matrix ``(k, m)`` of a chunk (rows of unused molecules zero) and its Z."""
        k = ch.counts.shape[0]
        Zu = np.where(np.repeat(use, ch.counts), Z, 0)  # unused molecules: dummy element 0
        elements = np.flatnonzero(np.bincount(Zu, minlength=_COLUMNS))
        column = np.zeros(_COLUMNS, dtype=np.int64)
        column[elements] = np.arange(elements.size)
        mol = np.repeat(np.arange(k), ch.counts)
        X = np.bincount(mol * elements.size + column[Zu], minlength=k * elements.size)
        X = X.reshape(k, elements.size).astype(np.float64)
        X[:, elements == 0] = 0.0
        return X, elements

    def accumulate(self, ch: Chunk, Z: np.ndarray, E: np.ndarray, use: np.ndarray) -> None:
        """Add the molecules ``use (k,)`` of a chunk (atoms ``Z (A,)``, energies ``E (k,)``)."""
        X, el = self._counts(ch, Z, use)
        self.XtX[np.ix_(el, el)] += X.T @ X
        self.Xty[el] += X.T @ np.where(use, E, 0.0)
        self.n_used += int(use.sum())

    def remove(self, ds: PackedDataset, idx: np.ndarray, chunk_atoms: int) -> None:
        """Take the structures ``idx`` (all used in the fit) out of the normal equations."""
        for b0, b1 in batches(np.asarray(ds.n_atoms)[idx], chunk_atoms):
            rows = ds.gather(idx[b0:b1], fields=("Z", "E"))
            ch = Chunk(0, b1 - b0, 0, int(rows["offsets"][-1]), rows["offsets"][:-1], rows["n_atoms"])
            X, el = self._counts(ch, rows["Z"], np.ones(b1 - b0, dtype=bool))
            self.XtX[np.ix_(el, el)] -= X.T @ X
            self.Xty[el] -= X.T @ np.asarray(rows["E"], dtype=np.float64)
        self.n_used -= int(idx.size)

    def solve(self) -> None:
        if self.n_used < MIN_FIT_STRUCTURES:
            return
        el = np.flatnonzero(np.diag(self.XtX) > 0)
        w = np.zeros(_COLUMNS)
        w[el] = np.linalg.lstsq(self.XtX[np.ix_(el, el)], self.Xty[el], rcond=None)[0]
        self.weights = w
        self.residuals = np.full(self.n_molecules, np.nan)

    @property
    def ready(self) -> bool:
        return self.weights is not None

    def add_residuals(self, ch: Chunk, Z: np.ndarray, E: np.ndarray) -> None:
        """Per-atom residuals of the chunk's molecules (NaN where E or Z is unusable)."""
        use = np.isfinite(E) & ~np.logical_or.reduceat((Z < 1) | (Z > MAX_Z), ch.starts)
        X, el = self._counts(ch, Z, use)
        self.residuals[ch.m0 : ch.m1] = np.where(use, (E - X @ self.weights[el]) / ch.counts, np.nan)


def robust_outliers(values: np.ndarray, sigma: float, *, two_sided: bool):
    """Indices of ``values (N,)`` with robust z-score beyond ``sigma``, the worst, its z,
    median and scale: ``(idx, worst, z, median, scale)``, or None without outliers or data.

    The scale is 1.4826·MAD, else 1.2533·mean absolute deviation when MAD is 0, floored
    at ``SCALE_FLOOR``. NaN values are ignored.
    """
    finite = values[np.isfinite(values)]
    if finite.size < MIN_FIT_STRUCTURES:
        return None
    med = float(np.median(finite))
    dev = np.abs(finite - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= SCALE_FLOOR:
        scale = 1.2533 * float(dev.mean())
    scale = max(scale, SCALE_FLOOR)
    with np.errstate(invalid="ignore"):
        z = (values - med) / scale
        score = np.abs(z) if two_sided else z
        idx = np.flatnonzero(score > sigma)
    if idx.size == 0:
        return None
    worst = int(idx[np.argmax(score[idx])])
    return idx, worst, float(z[worst]), med, scale
