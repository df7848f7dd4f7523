"""Walking a packed dataset in bounded memory: chunks of whole molecules, batches of items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..packed import PackedDataset


@dataclass
class Chunk:
    """Molecules ``m0:m1`` with their atom rows ``a0:a1`` and local offsets."""

    m0: int
    m1: int
    a0: int
    a1: int
    starts: np.ndarray  # (k,) first atom of each molecule, relative to a0
    counts: np.ndarray  # (k,) atoms per molecule


def chunks(ds: PackedDataset, chunk_atoms: int) -> Iterator[Chunk]:
    """Consecutive whole-molecule chunks of at most ``chunk_atoms`` atoms + grid points
    (at least one molecule each)."""
    offsets = np.asarray(ds.offsets, dtype=np.int64)
    weight = offsets if ds.grid_offsets is None else offsets + np.asarray(ds.grid_offsets, dtype=np.int64)
    m0, N = 0, ds.n_molecules
    while m0 < N:
        m1 = int(np.searchsorted(weight, weight[m0] + chunk_atoms, side="right")) - 1
        m1 = min(max(m1, m0 + 1), N)
        off = offsets[m0 : m1 + 1]
        yield Chunk(m0, m1, int(off[0]), int(off[-1]), off[:-1] - off[0], np.diff(off))
        m0 = m1


def batches(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of items whose ``sizes (n,)`` add up to at most
    ``budget`` (at least one item each)."""
    ends = np.cumsum(sizes)
    b0 = 0
    while b0 < ends.size:
        done = int(ends[b0 - 1]) if b0 else 0
        b1 = max(b0 + 1, int(np.searchsorted(ends, done + budget, side="right")))
        yield b0, b1
        b0 = b1


def molecules_of_rows(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Unique local molecule indices of flat local ``rows (r,)``, given each molecule's first
    row ``starts (k,)``."""
    return np.unique(np.searchsorted(starts, rows, side="right") - 1)
