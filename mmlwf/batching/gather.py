"""Compiled copies of the rows of many molecules into one padded batch (GIL released).

Each molecule's rows are contiguous in the packed arrays, so a batch is a handful of
block copies; doing them in one compiled call per batch keeps the Python overhead per
batch constant, whatever the number of molecules in it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fill_batch(mol, ds_offsets, Zs, Rs, Fs, qs, Es, Qs, Ds, Z, R, F, q, E, Q, D, atom_graph, atom_mask,
               offsets, n_atoms, graph_mask, index):
    """Copy the rows of molecules ``mol`` one after another: per-atom ``Z R F q`` and
    per-molecule ``E Qtot D`` (absent fields come as empty arrays), and fill the batch's
    ``atom_graph``, ``atom_mask``, ``offsets``, ``n_atoms``, ``graph_mask`` and ``index``."""
    has_E = Es.shape[0] > 0
    has_Q = Qs.shape[0] > 0
    has_D = Ds.shape[0] > 0
    for k in range(mol.shape[0]):
        m = mol[k]
        index[k] = m
        graph_mask[k] = True
        n_atoms[k] = ds_offsets[m + 1] - ds_offsets[m]
        if has_E:
            E[k] = Es[m]
        if has_Q:
            Q[k] = Qs[m]
        if has_D:
            D[k, 0] = Ds[m, 0]
            D[k, 1] = Ds[m, 1]
            D[k, 2] = Ds[m, 2]
    has_F = Fs.shape[0] > 0
    has_q = qs.shape[0] > 0
    # touch one value per cache line of every block first: independent loads, so the
    # memory system fetches many blocks at once instead of one after the other
    touched = 0.0
    for k in range(mol.shape[0]):
        a = ds_offsets[mol[k]]
        b = ds_offsets[mol[k] + 1]
        for r in range(a, b, 5):
            touched += Rs[r, 0]
            if has_F:
                touched += Fs[r, 0]
        for r in range(a, b, 16):
            touched += Zs[r]
    p = 0
    for k in range(mol.shape[0]):
        a = ds_offsets[mol[k]]
        n = ds_offsets[mol[k] + 1] - a
        offsets[k] = p
        for r in range(n):
            Z[p + r] = Zs[a + r]
            R[p + r, 0] = Rs[a + r, 0]
            R[p + r, 1] = Rs[a + r, 1]
            R[p + r, 2] = Rs[a + r, 2]
            atom_graph[p + r] = k
            atom_mask[p + r] = True
        if has_F:
            for r in range(n):
                F[p + r, 0] = Fs[a + r, 0]
                F[p + r, 1] = Fs[a + r, 1]
                F[p + r, 2] = Fs[a + r, 2]
        if has_q:
            for r in range(n):
                q[p + r] = qs[a + r]
        p += n
    offsets[mol.shape[0]] = p
    if touched == 1.2345e300:  # a side effect on the touched values keeps that pass alive
        offsets[0] = 0
    return p


@njit(cache=True, nogil=True)
def fill_rows(src, starts, counts, out):
    """Copy ``counts[k]`` rows from ``src[starts[k]:]`` for each k, one after another."""
    width = src.shape[1]
    p = 0
    for k in range(starts.shape[0]):
        a = starts[k]
        for r in range(counts[k]):
            for c in range(width):
                out[p + r, c] = src[a + r, c]
        p += counts[k]
    return p


def gather_rows(src: np.ndarray, starts: np.ndarray, counts: np.ndarray, out: np.ndarray) -> int:
    """Rows ``src[starts[k] : starts[k] + counts[k]]`` for each k, concatenated into ``out``."""
    flat_src = np.asarray(src).reshape(src.shape[0], -1)
    return fill_rows(flat_src, np.asarray(starts, np.int64), np.asarray(counts, np.int64), out.reshape(out.shape[0], -1))
