"""Training from the workflow's files: ``mmlwf train`` and the ``train`` rule call this.

``packed/`` + ``split.npz`` + ``stats.json`` + a YAML config -> a run directory (DESIGN §10).
Re-running on the same run directory resumes it from its latest checkpoint.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError
from .config import load_config
from .data import element_energies_from_stats, make_loaders
from .engine import train


def run_training(
    config: str | os.PathLike | Mapping | None,
    data: str | os.PathLike,
    split: str | os.PathLike,
    stats: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    prefetch: int = 4,
    workers: int = 2,
    progress: bool | None = None,
) -> dict:
    """Train (or resume) the model of ``config`` on the training split; return the summary."""
    from ..models import physnet

    cfg = load_config(config, overrides)
    model_type = str(cfg.model.get("type", "physnet")).lower()
    if model_type != "physnet":
        raise ConfigError(f"model.type '{model_type}': only physnet can be trained so far")
    try:
        model = physnet.build_model(cfg.model)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    train_loader, valid_loader = make_loaders(data, split, cfg, cutoff=physnet.pair_cutoff(model),
                                              prefetch=prefetch, workers=workers)
    return train(
        Path(run_dir),
        model=model,
        config=cfg,
        train_loader=train_loader,
        valid_loader=valid_loader,
        element_energies=element_energies_from_stats(stats),
        forward=functools.partial(physnet.energy_and_forces, model),
        metadata={"dataset": str(data), "split": str(split), "stats": str(stats)},
        progress=progress,
    )
