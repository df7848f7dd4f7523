"""Training from the workflow's files: ``mmlwf train`` and the ``train`` rule call this.

``packed/`` + ``split.npz`` + ``stats.json`` + a YAML config -> a run directory (docs/architecture.md §4).
Re-running on the same run directory resumes it from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..integrity import check_provenance, verify_in_background
from ..packed import PackedDataset
from .config import load_config
from .data import (as_list, data_facts, element_energies_from_stats, element_energies_source, init_statistics,
                   make_loaders, mixture_element_energies)
from .engine import train
from .finetune import source_config


def run_training(
    config: str | os.PathLike | Mapping | None,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str | os.PathLike | Sequence[str | os.PathLike],
    stats: str | os.PathLike | Sequence[str | os.PathLike] | None,
    run_dir: str | os.PathLike,
    *,
    weights: Sequence[float] | None = None,
    overrides: Sequence[str] = (),
    prefetch: int = 4,
    workers: int = 2,
    progress: bool | None = None,
    verbose: bool = False,
    summary_every: float | None = None,
) -> dict:
    """Train (or resume) the model of ``config`` on the training split; return the summary.

    ``model.type``: a kind of :mod:`mmlwf.models.registry`; an energy model (``physnet``)
    needs ``stats`` for the element energies, ``dcmnet`` an ESP dataset (``stats`` unused,
    may be None). A weighted mixture: lists of datasets,
    splits and stats with ``weights`` (each training split visited ``weight`` times per
    epoch); its element energies are the members' isolated-atom references (which must agree)
    or else fitted on the union of the training splits. ``model.json`` records where the
    element energies come from (``metadata.element_energies_source``). A new run's fresh
    parameters are set from the statistics (:func:`.data.init_statistics`; PhysNet: the energy
    shift and scale); a resumed run keeps its checkpoint's. A fine-tuning run (``finetune.init_from``)
    takes its model settings and first parameters from its source (:mod:`.finetune`).
    ``progress``, ``verbose``, ``summary_every``: what the terminal shows (:mod:`.progress`).
    """
    data, split = as_list(data), as_list(split)
    stats = None if stats is None else as_list(stats)
    mixture = len(data) > 1
    verifying = verify_in_background(data)  # checksums, overlapped with the start-up below
    from ..models.registry import kind_of_config

    cfg = source_config(load_config(config, overrides), run_dir)  # fine-tuning: the source's model settings
    kind = kind_of_config(cfg.model)
    try:  # "auto" model settings (PhysNet's physics) decided once, here, from the training data
        resolved, physics = kind.resolve_settings(cfg.model, data_facts([PackedDataset(p) for p in data]))
        cfg = dataclasses.replace(cfg, model=resolved)
        model = kind.build_model(cfg.model)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    if kind.predicts_energy and stats is None and not mixture:
        raise ConfigError(f"model.type {kind.name} needs the training statistics (--stats STATS.json)")
    digests = [v.digest for v in verifying.result()]  # a mismatch stops here: nothing written yet
    check_provenance(data, split, stats, digests)
    element_energies = source = None
    if kind.predicts_energy:
        if mixture:
            element_energies, source = mixture_element_energies(data, split, stats)
        else:
            element_energies, source = element_energies_from_stats(stats[0]), element_energies_source(stats[0])
    forward = kind.make_forward(model, cfg.training)
    train_loader, valid_loader = make_loaders(data, split, cfg, cutoff=kind.pair_cutoff(model),
                                              long_cutoff=kind.long_pair_cutoff(model), weights=weights,
                                              prefetch=prefetch, workers=workers)
    missing = [f for f in kind.dataset_fields if f not in train_loader.fields]
    if missing:
        raise ConfigError(f"model.type {kind.name} needs {kind.dataset_need or 'other data'}: {data} has no "
                          f"{'/'.join(repr(f) for f in kind.dataset_fields)} fields")
    return train(
        Path(run_dir),
        model=model,
        config=cfg,
        train_loader=train_loader,
        valid_loader=valid_loader,
        element_energies=element_energies,
        forward=forward,
        metadata={**({"physics": physics} if physics else {}), "dataset": str(data[0]),
                  "dataset_digest": digests[0], "split": str(split[0]),
                  "stats": None if stats is None else str(stats[0]),
                  **({"element_energies_source": source} if source is not None else {}),
                  **({"mixture": [{"dataset": str(d), "dataset_digest": g, "split": str(s), "weight": float(w)}
                                  for d, g, s, w in zip(data, digests, split, weights or [1.0] * len(data))]}
                     if mixture else {})},
        progress=progress,
        verbose=verbose,
        summary_every=summary_every,
        init_stats=None if stats is None else init_statistics(stats, element_energies, weights),
    )

