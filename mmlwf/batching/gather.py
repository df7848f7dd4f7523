"""Copy the rows of many molecules into a padded buffer: contiguous blocks, compiled, GIL released."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _copy_blocks(src, starts, counts, out):
    """2-d ``src (rows, width)``: element loops, no per-row array views."""
    p = 0
    width = src.shape[1]
    for k in range(starts.shape[0]):
        a = starts[k]
        for r in range(counts[k]):
            for c in range(width):
                out[p + r, c] = src[a + r, c]
        p += counts[k]
    return p


@njit(cache=True, nogil=True)
def _copy_blocks_1d(src, starts, counts, out):
    p = 0
    for k in range(starts.shape[0]):
        a = starts[k]
        for r in range(counts[k]):
            out[p + r] = src[a + r]
        p += counts[k]
    return p


def gather_rows(src: np.ndarray, starts: np.ndarray, counts: np.ndarray, out: np.ndarray) -> int:
    """Copy ``counts[k]`` rows from ``src[starts[k]:]`` for each k, one after another, into ``out``.

    ``src`` may be a memory map: only the pages of these rows are read. Returns rows copied.
    """
    flat_src = np.asarray(src).reshape(src.shape[0], -1)
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    flat_out = out.reshape(out.shape[0], -1)
    if flat_src.shape[1] == 1:
        return _copy_blocks_1d(flat_src[:, 0], starts, counts, flat_out[:, 0])
    return _copy_blocks(flat_src, starts, counts, flat_out)
