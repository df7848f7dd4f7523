"""Loaders and reference energies for training from the workflow's files.

``packed/`` + ``split.npz`` + ``stats.json`` -> the training and validation
:class:`~mmlwf.batching.BatchLoader` s and the element energies :func:`~mmlwf.training.train`
takes. The training loader shuffles by ``training.seed`` (its order is a function of
``(seed, epoch)``, which exact resume relies on); the validation loader keeps one order.

Batch shapes are the loaders': each counts the neighbours of its split's structures once,
within the model's pair cutoff (and the pairs of its long-range list, for a model with one),
and derives its budgets from ``training.batch_atoms`` or ``training.batch_size``
(:func:`~mmlwf.batching.derive_budgets`).
``stats.json`` holds statistics of the data only (element energies, RMS values), so one
stats file serves every model trained on a dataset and the neighbour counting is not done
twice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..batching import BatchLoader
from ..element_energies import AUTO, DEFAULT_RIDGE, FIT, merge_references
from ..errors import ConfigError, DataError
from ..packed import PackedDataset
from ..split import load_split
from ..stats import load_stats
from .config import Config


#: batch shapes of the training and validation loaders: one, the full budget. Smaller shapes
#: serve only an epoch's last, part-filled batch (one per dataset), while each shape costs a
#: compilation of the train step: some 40 s for PhysNet on aspirin on 2 cores, when a 5-minute
#: budget trains 8.5-s epochs; the full shape's padding of that last batch costs far less
TRAINING_SHAPES = 1


def as_list(value) -> list:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def make_loaders(
    dataset: str | os.PathLike | Sequence[str | os.PathLike],
    split: str | os.PathLike | Sequence[str | os.PathLike],
    config: Config,
    *,
    cutoff: float | None = None,
    long_cutoff: float | None = None,
    weights: Sequence[float] | None = None,
    prefetch: int = 4,
    workers: int = 2,
) -> tuple[BatchLoader, BatchLoader | None]:
    """``(train_loader, valid_loader)``; ``valid_loader`` is None for an empty valid split.

    ``dataset``/``split``: one of each, or lists of equal length for a weighted mixture
    (``weights``: visits of each training split per epoch, default 1 each; validation covers
    every member's valid split once). The pair lists reach ``cutoff`` (message passing) and
    ``long_cutoff`` (the long-range list: None for none, ``math.inf`` for every pair of a
    molecule): give the model kind's ``pair_cutoff`` and ``long_pair_cutoff``; without
    ``cutoff`` both are those of the model that ``config.model`` describes. The batch size is
    ``training.batch_atoms`` atoms (or ``training.batch_size`` molecules), in one batch shape
    (:data:`TRAINING_SHAPES`), and the seed ``training.seed``. Each loader counts the pairs of its
    split once and derives its batch shapes from them (see the module docstring).
    ConfigError for a cutoff that is not a positive number.
    """
    paths, split_paths = as_list(dataset), as_list(split)
    if len(paths) != len(split_paths):
        raise ConfigError(f"{len(paths)} datasets but {len(split_paths)} splits")
    dss = [PackedDataset(p) for p in paths]
    sps = [load_split(sp, len(ds)) for sp, ds in zip(split_paths, dss)]
    names = [os.fspath(p) for p in paths]
    t = config.training
    if cutoff is None:  # the model kind's pair cutoffs, its "auto" settings resolved from these data
        from ..models.registry import kind_of_config

        kind = kind_of_config(config.model)
        resolved, _ = kind.resolve_settings(config.model, data_facts(dss))
        model = kind.build_model(resolved)
        cutoff, long_cutoff = float(kind.pair_cutoff(model)), kind.long_pair_cutoff(model)
    if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
        raise ConfigError(f"cutoff must be a positive number of Å, got {cutoff}")
    if long_cutoff is not None and not (isinstance(long_cutoff, (int, float)) and long_cutoff > 0):
        raise ConfigError(f"long-range cutoff must be a positive number of Å (or inf), got {long_cutoff}")
    common = {"batch_size": t.batch_size, "batch_atoms": t.batch_atoms, "cutoff": cutoff,
              "long_cutoff": long_cutoff, "n_shapes": TRAINING_SHAPES, "seed": t.seed, "prefetch": prefetch,
              "workers": workers, "names": names}
    train_loader = BatchLoader(dss, [sp.train for sp in sps], shuffle=True, weights=weights, **common)
    has_valid = any(sp.valid.size for sp in sps)
    valid_loader = BatchLoader(dss, [sp.valid for sp in sps], shuffle=False, **common) if has_valid else None
    return train_loader, valid_loader


def data_facts(datasets: Sequence[PackedDataset]) -> dict:
    """What the training data say about the model's "auto" settings
    (:meth:`~mmlwf.models.registry.ModelKind.resolve_settings`): ``dipoles``/``atomic_charges``,
    some dataset carries dipoles ``D``/atomic charges ``q``; ``includes_dispersion``, every
    dataset's reference energies include dispersion (its manifest says so; False when it does
    not record it); ``elements``, the sorted atomic numbers of all datasets."""
    return {"elements": sorted({int(z) for ds in datasets for z in ds.elements}),
            "dipoles": any("D" in ds.fields for ds in datasets),
            "atomic_charges": any("q" in ds.fields for ds in datasets),
            "includes_dispersion": bool(datasets) and all(getattr(ds, "includes_dispersion", False)
                                                          for ds in datasets)}


def joint_element_energies(
    datasets: Sequence[str | os.PathLike], splits: Sequence[str | os.PathLike], ridge: float = DEFAULT_RIDGE,
    choice: str = AUTO,
) -> tuple[dict[str, float], dict]:
    """``({"Z": eV}, element_energies_source)`` fitted on the union of the training splits of
    ``datasets`` (a mixture's one set of reference energies: the members must share a level of
    theory); ``choice`` ``fit`` refuses compositions that do not determine them, ``auto`` warns
    (:func:`mmlwf.stats.choose_element_energies`)."""
    import numpy as np

    from ..stats import choose_element_energies, element_counts

    dss = [PackedDataset(p) for p in datasets]
    trains = [load_split(sp, len(ds)).train for sp, ds in zip(splits, dss)]
    elements = np.asarray(sorted({int(z) for ds in dss for z in ds.elements}), np.int64)
    counts = np.concatenate([element_counts(ds, tr, elements) for ds, tr in zip(dss, trains)])
    energies = np.concatenate([np.asarray(ds.arrays["E"][tr], np.float64) for ds, tr in zip(dss, trains)])
    e_ref, source = choose_element_energies(choice, elements, counts, energies, ridge=ridge,
                                            where=", ".join(os.fspath(d) for d in datasets))
    return {str(int(z)): float(e) for z, e in zip(elements, e_ref)}, {**source, "mixture": True}


def mixture_element_energies(
    datasets: Sequence[str | os.PathLike], splits: Sequence[str | os.PathLike],
    stats: Sequence[str | os.PathLike] | None,
) -> tuple[dict[str, float], dict]:
    """A mixture's ``({"Z": eV}, element_energies_source)``: the members' isolated-atom or
    config references when every member's ``stats.json`` has them (they must agree), else a
    fit on the union of the training splits (refused when a member asked for ``fit`` and the
    union's compositions do not determine it; see :func:`mmlwf.element_energies.merge_references`)."""
    if stats is None:
        return joint_element_energies(datasets, splits)
    members = [(os.fspath(d), element_energies_from_stats(st), load_stats(st).get("element_energies_source"))
               for d, st in zip(datasets, stats)]
    merged = merge_references(members)
    if merged is not None:
        return merged
    requested = {(source or {}).get("requested", AUTO) for _, _, source in members}
    return joint_element_energies(datasets, splits, choice=FIT if FIT in requested else AUTO)


def init_statistics(stats: Sequence[str | os.PathLike], element_energies: Mapping | None,
                    weights: Sequence[float] | None = None) -> dict | None:
    """The statistics a new run's fresh parameters are set from (the model kind's
    ``init_from_stats``): the ``stats.json`` of one dataset; for a mixture the members'
    ``energy_residual_per_atom`` (mean, std, rms; weighted by weight × training structures)
    and ``force_rms`` (weighted by weight × training atoms) pooled, which holds when the
    mixture keeps the members' element energies; None when it does not (a fit on the union:
    the members' residuals are about other references)."""
    if len(stats) == 1:
        return load_stats(stats[0])
    members = [load_stats(st) for st in stats]
    refs = {str(z): float(e) for z, e in dict(element_energies or {}).items()}
    if any(any(abs(refs.get(str(z), np.nan) - float(e)) > 1e-9 for z, e in m.get("element_energies_by_Z", {}).items())
           for m in members):
        return None
    w = np.asarray(weights if weights is not None else [1.0] * len(members), np.float64)
    pooled: dict = {}
    resid = [m.get("energy_residual_per_atom") for m in members]
    if all(resid):
        c = w * np.asarray([m["n_train"] for m in members], np.float64)
        mean = float(np.dot(c, [r["mean"] for r in resid]) / c.sum())
        ms = float(np.dot(c, [r["rms"] ** 2 for r in resid]) / c.sum())
        pooled["energy_residual_per_atom"] = {"mean": mean, "std": float(np.sqrt(max(ms - mean**2, 0.0))),
                                              "rms": float(np.sqrt(ms))}
    if all("force_rms" in m for m in members):
        a = w * np.asarray([m["n_train"] * m["n_atoms"]["mean"] for m in members], np.float64)
        pooled["force_rms"] = float(np.sqrt(np.dot(a, [m["force_rms"] ** 2 for m in members]) / a.sum()))
    return pooled


def element_energies_source(stats: str | os.PathLike) -> dict | None:
    """Where the element energies of a ``stats.json`` come from (``element_energies_source``;
    None for stats files written before it was recorded: a fit)."""
    return load_stats(stats).get("element_energies_source")


def element_energies_from_stats(stats: str | os.PathLike) -> dict[str, float]:
    """``{"Z": eV}`` from a ``stats.json`` written by ``mmlwf stats``."""
    energies = load_stats(stats).get("element_energies_by_Z")
    if not isinstance(energies, dict) or not all(
        str(z).isdigit() and isinstance(e, (int, float)) for z, e in energies.items()
    ):
        raise DataError("missing or not a mapping of atomic number to energy", path=stats, field="element_energies_by_Z")
    return dict(energies)
