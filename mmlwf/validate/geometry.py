"""Geometry checks: the smallest interatomic distance per molecule, and duplicate structures."""

from __future__ import annotations

import numpy as np

from ..packed import PackedDataset
from .chunks import batches

KDTREE_ABOVE = 256  # molecules with more atoms use a k-d tree instead of all pairs
PAIR_BUDGET = 1 << 22  # floats in one batched (k, pairs, 3) difference array
DUPLICATE_RESOLUTION = 1e-5  # Å: positions are compared after rounding to this


# ----------------------------------------------------------------------------- distances


def min_distances(
    R: np.ndarray, starts: np.ndarray, counts: np.ndarray, use: np.ndarray, cutoff: float
) -> np.ndarray:
    """Smallest interatomic distance ``(k,)`` of each molecule (inf for one atom or ``~use``).

    ``R (A, 3)`` holds the molecules' atoms from ``starts (k,)``, ``counts (k,)`` each; ``use
    (k,)`` selects the molecules to measure. Molecules of up to ``KDTREE_ABOVE`` atoms are
    grouped by size and all pairs computed as batched ``(k, pairs, 3)`` arrays of at most
    ``PAIR_BUDGET`` floats; larger ones use a k-d tree, for which only distances below
    ``cutoff`` are exact (inf otherwise).
    """
    dmin = np.full(counts.shape[0], np.inf)
    for n in np.unique(counts):
        n = int(n)
        if n < 2:
            continue
        sel = np.flatnonzero((counts == n) & use)
        if n > KDTREE_ABOVE:
            from scipy.spatial import cKDTree

            for m in sel:
                pos = R[starts[m] : starts[m] + n].astype(np.float64)
                pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")
                if pairs.size:
                    dmin[m] = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1).min()
            continue
        i, j = np.triu_indices(n, 1)
        batch = max(1, PAIR_BUDGET // (3 * i.size))
        atom = np.arange(n)
        for b in range(0, sel.size, batch):
            ms = sel[b : b + batch]
            pos = R[starts[ms][:, None] + atom]  # (k, n, 3)
            diff = pos[:, i] - pos[:, j]  # (k, pairs, 3)
            dmin[ms] = np.sqrt(np.einsum("kpc,kpc->kp", diff, diff).min(axis=1))
    return dmin


# ----------------------------------------------------------------------------- duplicates

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _rounded(R: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(R, dtype=np.float64) / DUPLICATE_RESOLUTION).astype(np.int64)


def structure_hashes(Z: np.ndarray, R: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A 64-bit hash ``(k,)`` per molecule of its size, atom order, atomic numbers ``Z (A,)``
    and rounded positions ``R (A, 3)``."""
    if Z.size == 0:
        return np.zeros(counts.shape[0], dtype=np.uint64)
    with np.errstate(invalid="ignore"):  # NaN positions: hash is ignored for those molecules
        q = _rounded(R).view(np.uint64)
    position = (np.arange(Z.shape[0]) - np.repeat(starts, counts)).astype(np.uint64)
    h = _mix(position ^ _mix(Z.astype(np.int64).view(np.uint64)))
    for c in range(3):
        h = _mix(h ^ q[:, c])
    return _mix(np.add.reduceat(h, starts) ^ counts.astype(np.uint64))


def duplicates(
    ds: PackedDataset, hashes: np.ndarray, usable: np.ndarray, chunk_atoms: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(later copies, the earlier structure each duplicates), both ascending by later index,
    or None. ``hashes (N,)`` from :func:`structure_hashes`; ``usable (N,)`` the structures to compare.

    Candidates share a hash; each is confirmed by comparing the stored rows exactly.
    """
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return None
    order = idx[np.argsort(hashes[idx], kind="stable")]  # ties keep ascending structure order
    h = hashes[order]
    same = h[1:] == h[:-1]
    if not same.any():
        return None
    group = np.cumsum(np.concatenate([[True], ~same])) - 1
    first = order[np.flatnonzero(np.concatenate([[True], ~same]))]
    later = order[1:][same]
    earlier = first[group[1:][same]]
    n_atoms = np.asarray(ds.n_atoms)
    keep = n_atoms[later] == n_atoms[earlier]
    later, earlier = later[keep], earlier[keep]
    # confirm in batches of bounded size
    confirmed = np.zeros(later.size, dtype=bool)
    for b0, b1 in batches(n_atoms[later], chunk_atoms):
        a = ds.gather(later[b0:b1], fields=("Z", "R"))
        e = ds.gather(earlier[b0:b1], fields=("Z", "R"))
        equal = (a["Z"] == e["Z"]) & (_rounded(a["R"]) == _rounded(e["R"])).all(axis=1)
        confirmed[b0:b1] = np.logical_and.reduceat(equal, a["offsets"][:-1])
    later, earlier = later[confirmed], earlier[confirmed]
    if later.size == 0:
        return None
    sort = np.argsort(later)
    return later[sort], earlier[sort]
