"""What the training loop needs of a data loader.

:class:`Loader`: ``len(loader)`` batches per epoch and ``loader.epoch(e)``, the batches of
epoch ``e`` (a function of the epoch: exact resume relies on it). A
:class:`~mmlwf.batching.BatchLoader` is a :class:`PlannedLoader`: it also tells the plan of
an epoch without building a batch (``plan(e)``: one ``(dataset, molecule positions, shape
id)`` per batch) and builds one batch of a plan (``assemble``), so a run resumed in the
middle of an epoch skips the batches done without building them (and, with its batch
shapes ``budgets``, the data-parallel step count comes from the plan). Any other
:class:`Loader` (a test's wrapper) has its epoch built and the batches done dropped.

A loader may have a ``seed`` (the training loader's order is a function of ``(seed,
epoch)``); the loop notes when it is not ``training.seed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: a batch as the loader gives it (the arrays of one padded graph batch)
Batch = Mapping[str, Any]
#: one batch of an epoch's plan: (dataset number, molecule positions, shape id)
BatchSpec = tuple[int, np.ndarray, int]


@runtime_checkable
class Loader(Protocol):
    """Batches per epoch and the batches of an epoch (see the module docstring)."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int = 0) -> Iterator[Batch]: ...


@runtime_checkable
class PlannedLoader(Loader, Protocol):
    """A :class:`Loader` that plans its epochs (a :class:`~mmlwf.batching.BatchLoader`)."""

    def plan(self, epoch: int = 0) -> list[BatchSpec]: ...

    def assemble(self, k: int, positions: np.ndarray, shape_id: int) -> Batch: ...


def epoch_batches(loader: Loader, epoch: int, start: int) -> tuple[int, Iterator[Batch]]:
    """(number of batches of ``epoch``, iterator over them from batch ``start``)."""
    if isinstance(loader, PlannedLoader):
        specs = loader.plan(epoch)
        if start == 0:
            return len(specs), loader.epoch(epoch)
        return len(specs), (loader.assemble(*spec) for spec in specs[start:])
    batches = list(loader.epoch(epoch))  # no plan: no cheap way to skip
    return len(batches), iter(batches[start:])


def first_batch(loader: Loader) -> Batch:
    """The first batch of epoch 0 (for shapes: initialising the model, tracing the step)."""
    if isinstance(loader, PlannedLoader):
        return loader.assemble(*loader.plan(0)[0])
    return next(iter(loader.epoch(0)))


def loader_seed(loader: Loader, default: int) -> int:
    """The loader's ``seed`` (``default`` for a loader without one)."""
    return getattr(loader, "seed", default)
