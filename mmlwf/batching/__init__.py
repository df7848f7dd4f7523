"""Batches for the models: neighbour lists, size-aware planning, padding, prefetch (the batch: :mod:`mmlwf.batch`)."""

from .loader import BatchLoader, molecule_sizes
from .neighbours import count_pairs, neighbour_pairs
from .plan import Budget, derive_budgets, plan_epoch

__all__ = ["BatchLoader", "Budget", "count_pairs", "derive_budgets", "molecule_sizes", "neighbour_pairs", "plan_epoch"]
