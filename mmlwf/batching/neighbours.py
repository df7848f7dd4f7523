"""Neighbour lists within a cutoff for many molecules at once.

Pairs never cross molecules. Molecules up to :data:`ALL_PAIRS_MAX_ATOMS` atoms use a
compiled all-pairs loop (numba); larger ones a k-d tree (scipy), where all pairs would be
wasteful. Pairs are directed (both ``i -> j`` and ``j -> i``), given as ``dst``/``src``
atom indices into the concatenated atoms. A cutoff of ``math.inf`` means every ordered pair
of each molecule (the long-range list of Coulomb and dispersion): counted from the atom
counts alone and listed without reading positions, in the order a finite cutoff lists them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ALL_PAIRS_MAX_ATOMS = 512


@njit(cache=True, nogil=True)
def _count_small(R, offsets, molecules, cutoff2):
    counts = np.zeros(molecules.shape[0], np.int64)
    for k in range(molecules.shape[0]):
        m = molecules[k]
        a, b = offsets[m], offsets[m + 1]
        c = 0
        for i in range(a, b):
            xi, yi, zi = R[i, 0], R[i, 1], R[i, 2]
            for j in range(i + 1, b):
                dx, dy, dz = R[j, 0] - xi, R[j, 1] - yi, R[j, 2] - zi
                if dx * dx + dy * dy + dz * dz < cutoff2:
                    c += 2
        counts[k] = c
    return counts


@njit(cache=True, nogil=True)
def _fill_small(R, starts, ends, out_start, cutoff2, dst, src, capacity):
    """Pairs of the atom ranges ``[starts[k], ends[k])`` of ``R``, written with atom numbers
    shifted to ``out_start[k]``. Returns the number written, or -1 past ``capacity``."""
    p = 0
    for k in range(starts.shape[0]):
        a, b, shift = starts[k], ends[k], out_start[k] - starts[k]
        for i in range(a, b):
            xi, yi, zi = R[i, 0], R[i, 1], R[i, 2]
            for j in range(i + 1, b):
                dx, dy, dz = R[j, 0] - xi, R[j, 1] - yi, R[j, 2] - zi
                if dx * dx + dy * dy + dz * dz < cutoff2:
                    if p + 2 > capacity:
                        return -1
                    dst[p] = i + shift
                    src[p] = j + shift
                    dst[p + 1] = j + shift
                    src[p + 1] = i + shift
                    p += 2
    return p


@njit(cache=True, nogil=True)
def _fill_all(starts, ends, dst, src, capacity):
    """Every pair within each atom range ``[starts[k], ends[k])``, in :func:`_fill_small`'s
    order. Returns the number written, or -1 past ``capacity``."""
    p = 0
    for k in range(starts.shape[0]):
        a, b = starts[k], ends[k]
        if p + (b - a) * (b - a - 1) > capacity:
            return -1
        for i in range(a, b):
            for j in range(i + 1, b):
                dst[p] = i
                src[p] = j
                dst[p + 1] = j
                src[p + 1] = i
                p += 2
    return p


def _kdtree_pairs(positions: np.ndarray, cutoff: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    half = cKDTree(positions).query_pairs(cutoff, output_type="ndarray")
    return np.concatenate([half, half[:, ::-1]]) if half.size else np.zeros((0, 2), np.int64)


def count_pairs(R: np.ndarray, offsets: np.ndarray, cutoff: float, molecules: np.ndarray | None = None) -> np.ndarray:
    """Directed pairs within ``cutoff`` per molecule (``R`` concatenated, ``offsets (N+1,)``;
    ``cutoff`` ``math.inf``: ``n (n - 1)``, ``R`` unused)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if molecules is None:
        molecules = np.arange(offsets.shape[0] - 1, dtype=np.int64)
    molecules = np.asarray(molecules, dtype=np.int64)
    sizes = offsets[molecules + 1] - offsets[molecules]
    if math.isinf(cutoff):
        return sizes * (sizes - 1)
    large = sizes > ALL_PAIRS_MAX_ATOMS
    counts = np.zeros(molecules.shape[0], np.int64)
    small = ~large
    if small.any():
        counts[small] = _count_small(R, offsets, molecules[small], np.float64(cutoff) ** 2)
    for k in np.flatnonzero(large):
        m = molecules[k]
        counts[k] = _kdtree_pairs(np.asarray(R[offsets[m] : offsets[m + 1]]), cutoff).shape[0]
    return counts


def neighbour_pairs(
    R: np.ndarray,
    offsets: np.ndarray,
    cutoff: float,
    dst: np.ndarray | None = None,
    src: np.ndarray | None = None,
) -> int | tuple[np.ndarray, np.ndarray]:
    """Directed pairs within ``cutoff`` of molecules concatenated in ``R`` (``offsets (k+1,)``;
    ``cutoff`` ``math.inf``: every ordered pair of each molecule).

    Without ``dst``/``src`` returns the two index arrays. With preallocated ``dst``/``src``
    fills them in place and returns the number of pairs (``ValueError`` if they are too short).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    R = np.ascontiguousarray(R)
    if dst is None:
        n = int(count_pairs(R, offsets, cutoff).sum())
        dst, src = np.empty(n, np.int32), np.empty(n, np.int32)
        neighbour_pairs(R, offsets, cutoff, dst, src)
        return dst, src
    starts, ends = offsets[:-1], offsets[1:]
    large = (ends - starts) > ALL_PAIRS_MAX_ATOMS
    cutoff2 = np.float64(cutoff) ** 2
    if math.isinf(cutoff):
        n = _fill_all(starts, ends, dst, src, dst.shape[0])
    elif not large.any():
        n = _fill_small(R, starts, ends, starts, cutoff2, dst, src, dst.shape[0])
    else:
        small = ~large
        n = _fill_small(R, starts[small], ends[small], starts[small], cutoff2, dst, src, dst.shape[0])
        for k in np.flatnonzero(large):
            if n < 0:
                break
            pairs = _kdtree_pairs(R[starts[k] : ends[k]], cutoff) + starts[k]
            if n + pairs.shape[0] > dst.shape[0]:
                n = -1
                break
            dst[n : n + pairs.shape[0]] = pairs[:, 0]
            src[n : n + pairs.shape[0]] = pairs[:, 1]
            n += pairs.shape[0]
    if n < 0:
        raise ValueError(f"more pairs within {cutoff} Å than the {dst.shape[0]} slots given")
    return int(n)
