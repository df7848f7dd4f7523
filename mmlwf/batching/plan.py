"""Size-aware batch planning under fixed ``(n_graphs, n_atoms, n_pairs[, n_grid, n_long_pairs])`` budgets.

Molecules are taken in a seeded shuffled order and packed greedily into a batch until the
next one would overflow a budget. Each batch is then padded to the smallest of a few fixed
shapes that holds it (4 by default: the full budget and 1/2, 1/4, 1/8 of it), so a jitted
step compiles once per shape and never per batch. Every molecule is in exactly one batch.
Shapes keep one spare graph and one spare atom for padding.

The loader owns the batch shapes: each :class:`~mmlwf.batching.BatchLoader` derives its
budgets (:func:`derive_budgets`) from the per-molecule sizes it counts once over its split
(neighbours within its cutoff, the model's pair cutoff in training, and the pairs of the
long-range list where the model asks for one) and its batch size (``training.batch_atoms`` atoms,
or ``training.batch_size`` molecules).
Nothing else computes or records them (``stats.json`` does not). A size column that is zero
for every molecule (no grid) costs the planning nothing, and without a long-range list the
size table has no column for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError


def _round_up(x: float, multiple: int = 8) -> int:
    return int(-(-int(np.ceil(x)) // multiple) * multiple)


@dataclass(frozen=True, order=True)
class Budget:
    """Array sizes of one batch shape (padding included)."""

    n_graphs: int
    n_atoms: int
    n_pairs: int
    n_grid: int = 0
    n_long_pairs: int = 0  # the long-range pair list (0: none)

    def fits(self, graphs: int, atoms: int, pairs: int, grid: int = 0, long_pairs: int = 0) -> bool:
        # one graph and one atom are kept for padding
        return (graphs < self.n_graphs and atoms < self.n_atoms and pairs <= self.n_pairs and grid <= self.n_grid
                and long_pairs <= self.n_long_pairs)

    def as_dict(self) -> dict:
        return asdict(self)


def _greedy(cum: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Batch boundaries for items in order: a batch closes before the item that overflows.

    ``cum (n+1, k)`` cumulative per-item sizes, ``limits (k,)`` per-batch capacity; one
    binary search per batch and column, so the cost is O(n_batches k log n). Columns whose
    sizes are all zero are skipped.
    """
    n = cum.shape[0] - 1
    cols = [c for c in range(cum.shape[1]) if cum[-1, c] > 0]
    columns = [np.ascontiguousarray(cum[:, c]) for c in cols]
    bounds = [0]
    start = 0
    while start < n:
        stop = n
        for col, c in zip(columns, cols):
            # largest stop with col[stop] - col[start] <= limits[c]
            stop = min(stop, int(col.searchsorted(col[start] + limits[c], side="right")) - 1)
        if stop <= start:
            first = cum[start + 1] - cum[start]
            raise ConfigError(
                f"a molecule of size {first.tolist()} ({', '.join(SIZE_COLUMNS[: len(first)])}) does not fit the "
                f"batch budget {limits.tolist()}; raise the batch size"
            )
        bounds.append(stop)
        start = stop
    return np.asarray(bounds, dtype=np.int64)


@dataclass
class BatchPlan:
    """Batches of one epoch: molecule order, batch boundaries and the shape of each batch."""

    order: np.ndarray  # molecule positions (into the loader's index list), batch after batch
    bounds: np.ndarray  # batch b holds order[bounds[b]:bounds[b+1]]
    shape_ids: np.ndarray  # index into the budgets, per batch

    def __len__(self) -> int:
        return int(self.bounds.shape[0] - 1)

    def batch(self, b: int) -> np.ndarray:
        return self.order[self.bounds[b] : self.bounds[b + 1]]


#: the columns of a size table (and the fields of a :class:`Budget`, in order)
SIZE_COLUMNS = ("graphs", "atoms", "pairs", "grid", "long_pairs")


def size_table(n_atoms: np.ndarray, n_pairs: np.ndarray, n_grid: np.ndarray | None = None,
               n_long_pairs: np.ndarray | None = None) -> np.ndarray:
    """``(n, 4)`` per-molecule sizes (:data:`SIZE_COLUMNS`): graphs (1), atoms, pairs, grid
    points (zeros where None); ``(n, 5)`` with the long-range pairs where given (without a
    long-range list the planning does no work for one)."""
    n = n_atoms.shape[0]
    grid = np.zeros(n, np.int64) if n_grid is None else np.asarray(n_grid, np.int64)
    columns = [np.ones(n, np.int64), np.asarray(n_atoms, np.int64), np.asarray(n_pairs, np.int64), grid]
    if n_long_pairs is not None:
        columns.append(np.asarray(n_long_pairs, np.int64))
    return np.stack(columns, axis=1)


def _limits(b: Budget, columns: int) -> np.ndarray:
    """What the real molecules of a batch of shape ``b`` may fill, per size column (the first ``columns``)."""
    return np.array([b.n_graphs - 1, b.n_atoms - 1, b.n_pairs, b.n_grid, b.n_long_pairs][:columns], dtype=np.int64)


def plan_epoch(sizes: np.ndarray, budgets: list[Budget], order: np.ndarray) -> BatchPlan:
    """Pack molecules in ``order`` under the largest budget; pad each batch to the smallest fitting shape."""
    cum = np.zeros((order.shape[0] + 1, sizes.shape[1]), np.int64)
    np.cumsum(sizes[order], axis=0, out=cum[1:])
    bounds = _greedy(cum, _limits(max(budgets), sizes.shape[1]))
    totals = cum[bounds[1:]] - cum[bounds[:-1]]
    ordered = sorted(range(len(budgets)), key=lambda i: budgets[i])
    shape_ids = np.full(totals.shape[0], -1, dtype=np.int64)
    for i in reversed(ordered):  # the smallest shape that fits wins (assigned last)
        shape_ids[np.all(totals <= _limits(budgets[i], sizes.shape[1]), axis=1)] = i
    return BatchPlan(order=order, bounds=bounds, shape_ids=shape_ids)


def derive_budgets(sizes: np.ndarray, batch_size: int | None = None, n_shapes: int = 4, seed: int = 0,
                   *, batch_atoms: int | None = None) -> list[Budget]:
    """Budgets for batches of ``batch_atoms`` atoms or of ``batch_size`` molecules on average
    (give one), from the per-molecule sizes ``sizes`` (n, 4 or 5), see :func:`size_table`.

    The atom budget is ``batch_atoms`` (padding included, rounded up to a multiple of 8), or
    holds ``batch_size`` average molecules; either way at least the biggest molecule. The graph
    budget leaves room for runs of small molecules; the pair (grid, long-range pair) budget is
    the 95th percentile of what such batches need, found by planning one shuffled epoch.
    Smaller shapes are 1/2, 1/4, ... of the full one, for the last batches of an epoch.
    """
    if (batch_size is None) == (batch_atoms is None):
        raise ConfigError("give one of batch_size (molecules) and batch_atoms (atoms) per batch")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if batch_atoms is not None and batch_atoms < 2:
        raise ConfigError(f"batch_atoms must be >= 2, got {batch_atoms}")
    if n_shapes < 1:
        raise ConfigError(f"n_shapes must be >= 1, got {n_shapes}")
    n = sizes.shape[0]
    if n == 0:
        raise ConfigError("no structures to batch")
    mean = sizes.mean(axis=0)
    biggest = sizes.max(axis=0)
    if batch_atoms is not None:
        n_atoms = _round_up(max(batch_atoms, biggest[1] + 1))
    else:
        n_atoms = _round_up(max(batch_size * mean[1], biggest[1]) + 1)
    n_graphs = _round_up(max(n_atoms / max(mean[1], 1) * 1.25, 2) + 1)
    # pairs, grid points and long pairs: plan an epoch with them unlimited, keep the 95th percentile
    unlimited = np.iinfo(np.int64).max // 4
    open_budget = Budget(n_graphs, n_atoms, unlimited, unlimited, unlimited)
    order = np.random.default_rng(seed).permutation(n)
    plan = plan_epoch(sizes, [open_budget], order)
    cum = np.zeros((n + 1, sizes.shape[1]), np.int64)
    np.cumsum(sizes[order], axis=0, out=cum[1:])
    totals = cum[plan.bounds[1:]] - cum[plan.bounds[:-1]]
    full_rows = totals[:-1] if totals.shape[0] > 1 else totals
    n_pairs = _round_up(max(np.percentile(full_rows[:, 2], 95), biggest[2], 1))
    n_grid = _round_up(max(np.percentile(full_rows[:, 3], 95), biggest[3])) if biggest[3] > 0 else 0
    long = sizes.shape[1] > 4 and biggest[4] > 0
    n_long = _round_up(max(np.percentile(full_rows[:, 4], 95), biggest[4])) if long else 0
    budgets = []
    for k in range(n_shapes):
        f = 0.5**k
        b = Budget(
            n_graphs=max(_round_up(n_graphs * f), 2),
            n_atoms=max(_round_up(n_atoms * f), int(biggest[1]) + 1),
            n_pairs=max(_round_up(n_pairs * f), int(biggest[2])),
            n_grid=max(_round_up(n_grid * f), int(biggest[3])) if n_grid else 0,
            n_long_pairs=max(_round_up(n_long * f), int(biggest[4])) if long else 0,
        )
        if b not in budgets:
            budgets.append(b)
    return sorted(budgets, reverse=True)
