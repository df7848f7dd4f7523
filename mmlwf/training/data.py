"""Loaders and reference energies for training from the workflow's files.

``packed/`` + ``split.npz`` + ``stats.json`` -> the training and validation
:class:`~mmlwf.batching.BatchLoader` s and the element energies :func:`~mmlwf.training.train`
takes. The training loader shuffles by ``training.seed`` (its order is a function of
``(seed, epoch)``, which exact resume relies on); the validation loader keeps one order.
"""

from __future__ import annotations

import os

from ..batching import BatchLoader
from ..packed import PackedDataset
from ..split import load_split
from ..stats import load_stats
from .config import Config

DEFAULT_CUTOFF = 5.0


def make_loaders(
    dataset: str | os.PathLike,
    split: str | os.PathLike,
    config: Config,
    *,
    cutoff: float | None = None,
    prefetch: int = 4,
    workers: int = 2,
) -> tuple[BatchLoader, BatchLoader | None]:
    """``(train_loader, valid_loader)``; ``valid_loader`` is None for an empty valid split.

    The neighbour-list cutoff is ``cutoff`` (give the model's pair cutoff: with Coulomb it
    reaches further than ``model.cutoff``), else ``model.cutoff`` (default 5.0 Å); the batch
    size is ``training.batch_size`` and the seed ``training.seed``.
    """
    ds = PackedDataset(dataset)
    sp = load_split(split, len(ds))
    t = config.training
    if cutoff is None:
        cutoff = float(config.model.get("cutoff", DEFAULT_CUTOFF))
    common = {"batch_size": t.batch_size, "cutoff": cutoff, "seed": t.seed, "prefetch": prefetch,
              "workers": workers}
    train_loader = BatchLoader(ds, sp.train, shuffle=True, **common)
    valid_loader = BatchLoader(ds, sp.valid, shuffle=False, **common) if sp.valid.size else None
    return train_loader, valid_loader


def element_energies_from_stats(stats: str | os.PathLike) -> dict[str, float]:
    """``{"Z": eV}`` from a ``stats.json`` written by ``mmlwf stats``."""
    return dict(load_stats(stats)["element_energies_by_Z"])
