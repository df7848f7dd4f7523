"""Bootstrapped ensemble members: each member trains on its own resample of the training split.

Member ``k`` of an ensemble with ``ensemble.bootstrap`` draws, for every dataset of the training
loader (each dataset of a mixture on its own, so the mixture's proportions stay), as many
structures as the dataset's training part has, with replacement: the multinomial counts
``c_k,i`` (0, 1, 2, ...; mean 1, about 37 % zero), seeded by ``(training.seed, k, dataset)``.
The members still share every batch (one compiled step); a structure's errors count ``c_k,i``
times in member ``k``'s error sums (and in their counts ``*_n``), so member ``k`` minimises the
loss of its bootstrap sample, as if trained alone on it. Validation is unweighted.

The counts are a function of the seed and the split, recomputed at every (re)start and never
stored; batches get them as ``GraphBatch.sample_weight (M, B)`` from the batch's ``dataset``
and ``index`` (:meth:`SampleWeights.of`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..batch import GraphBatch
from ..errors import ConfigError


def bootstrap_counts(n: int, members: int, seed: int, dataset: int = 0) -> np.ndarray:
    """``(members, n)`` int32: member ``k``'s draw counts of ``n`` structures (each row sums to
    ``n``), from ``numpy.random.default_rng((seed, k, dataset))``."""
    out = np.zeros((members, n), np.int32)
    if n:
        for k in range(members):
            out[k] = np.random.default_rng((seed, k, dataset)).multinomial(n, np.full(n, 1.0 / n))
    return out


class SampleWeights:
    """Per-member weights of the structures of a loader's datasets (``(M, len(dataset))``
    float32 each; 0 outside the training part)."""

    def __init__(self, dataset_sizes: Sequence[int], train_indices: Sequence[np.ndarray], members: int,
                 seed: int) -> None:
        self.tables = []
        for d, (size, idx) in enumerate(zip(dataset_sizes, train_indices)):
            table = np.zeros((members, int(size)), np.float32)
            table[:, np.asarray(idx, np.int64)] = bootstrap_counts(len(idx), members, seed, d)
            self.tables.append(table)

    @classmethod
    def of_loader(cls, loader, members: int, seed: int) -> SampleWeights:
        """The weights of the training structures of a :class:`~mmlwf.batching.BatchLoader`."""
        datasets = getattr(loader, "members", None)
        if datasets is None:
            raise ConfigError("ensemble.bootstrap: the training loader does not name its structures "
                              "(a BatchLoader does)")
        return cls([len(m.ds) for m in datasets], [m.indices for m in datasets], members, seed)

    def of(self, batch: GraphBatch) -> np.ndarray:
        """``(M, B)`` float32: each member's weight of each graph of ``batch`` (0 for padding)."""
        index = np.asarray(batch.index, np.int64)
        table = self.tables[int(batch.dataset if batch.dataset is not None else 0)]
        return np.where(index >= 0, table[:, np.maximum(index, 0)], 0.0).astype(np.float32)
