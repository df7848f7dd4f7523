"""A trained model ready to predict: :class:`TrainedModel`, loading one from a run directory
(:func:`load_run`) and the jitted forward of a model (:func:`jitted_forward`, one cache for
prediction, the calculator and MD).

An ensemble (``model.json`` ``ensemble``, :mod:`mmlwf.ensemble`) is a :class:`TrainedModel`
whose parameters carry a leading member axis (``full``) or whose model has output heads
(``shallow``); :attr:`TrainedModel.forward` is then one compiled program giving the member means
and the raw spreads (``<name>_spread``).

Below the analysis layer: the calculator, export and analysis all load models from here.
Which model a run holds comes from :mod:`mmlwf.models.registry` (``model.json``'s
``model.type``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .element_energies import reference_table  # noqa: F401  (re-exported)


@dataclass
class TrainedModel:
    """A rebuilt model with its parameters and reference energies.

    ``model``: the flax module; ``params``: its variables; ``info``: ``model.json`` (or an
    export's ``model_info``); ``reference``: ``(Z_TABLE_SIZE,)`` eV by atomic number (NaN: unknown);
    ``run_dir``: the run directory or exported file it came from.
    """

    model: Any
    params: Any
    info: dict
    reference: np.ndarray  # (Z_TABLE_SIZE,) eV by atomic number
    run_dir: Path

    @property
    def members(self) -> int:
        """Members of the model: models of a full ensemble, heads of a shallow one (1: a single model)."""
        from .ensemble import ensemble_size

        return ensemble_size(self.info)

    @property
    def is_ensemble(self) -> bool:
        """Whether predictions come with spreads over members (``model.json`` ``ensemble``)."""
        return self.members > 1

    @property
    def ensemble_kind(self) -> str | None:
        """``"full"`` (parameters with a leading member axis), ``"shallow"`` (one parameter set,
        output heads) or None (a single model): ``model.json`` ``ensemble.kind``."""
        from .ensemble import ensemble_kind

        return ensemble_kind(self.info)

    def spread_scale(self, quantity: str) -> float:
        """The factor multiplying the raw spread of ``quantity`` (``"energy"``, ``"forces"``)
        fitted on the validation split (``model.json`` ``ensemble.scale``; 1.0 when none)."""
        from .ensemble import spread_scale

        return spread_scale(self.info, quantity)

    @property
    def forward(self) -> Callable:
        """The jitted ``forward(params, batch) -> outputs`` for :attr:`params`: the model's own,
        or for an ensemble the member means with ``<name>_spread`` (raw) and
        ``<name>_members`` (:func:`mmlwf.ensemble.ensemble_forward`)."""
        return jitted_forward(self.model, ensemble=self.ensemble_kind)

    @property
    def kind(self):
        """The :class:`~mmlwf.models.registry.ModelKind` of the model."""
        from .models.registry import kind_of_config, kind_of_model

        return kind_of_model(self.model) or kind_of_config(self.info.get("model"))

    @property
    def pair_cutoff(self) -> float:
        """The distance (Å) the pair list must reach."""
        if hasattr(self.model, "pair_cutoff"):
            return float(self.model.pair_cutoff)
        return self.kind.pair_cutoff(self.model)

    @property
    def long_pair_cutoff(self) -> float | None:
        """How far the long-range pair list must reach (Å; ``math.inf``: every pair of a
        molecule), or None when the model takes none (its kind's ``long_pair_cutoff``)."""
        return self.kind.long_pair_cutoff(self.model)


def build_model(model_config: Mapping, stored: bool = False):
    """The flax module of a ``model:`` section (its kind from ``type``); ``stored``: a section
    read from a ``model.json`` or an exported file (:meth:`~mmlwf.models.registry.ModelKind.stored_config`)."""
    from .models.registry import kind_of_config

    kind = kind_of_config(model_config)
    return kind.build_model(kind.stored_config(model_config) if stored else model_config)


def load_run(run_dir: str | os.PathLike, which: str = "best") -> TrainedModel:
    """The model of a run directory with the ``best`` (default) or ``latest`` parameters
    (the EMA weights when the run kept an EMA)."""
    from .training.checkpoint import load_params

    params, info = load_params(run_dir, which)
    model = build_model(info["model"], stored=True)
    return TrainedModel(model, params, info, reference_table(info["element_energies_by_Z"]), Path(run_dir))


def jitted_forward(model, ensemble: bool | str | None = None) -> Callable:
    """``jit(forward)`` of a model (energy and forces, or the ESP: its kind's forward), shared
    by every prediction and calculator of the same configuration, so XLA compiles once per
    padded shape and dtype. ``ensemble``: ``"full"`` (or True) the forward of stacked parameters
    (leading member axis), ``"shallow"`` that of a model with output heads (per-head forces: ~H
    backward passes); either one program giving the member means, ``<name>_spread`` and
    ``<name>_members`` (:func:`model_forward`)."""
    kind = "full" if ensemble is True else (ensemble or None)
    return _jitted_forward(model, kind)  # one cache key however it is called


def model_forward(model, ensemble: str | None = None) -> Callable:
    """The (not jitted) ``forward(params, batch)`` of ``model`` (its kind's), or with
    ``ensemble`` (``"full"``/``"shallow"``: ``model.json`` ``ensemble.kind``) the ensemble's means
    and spreads (:func:`mmlwf.ensemble.ensemble_forward`)."""
    from .models.registry import kind_of_model

    kind = kind_of_model(model)
    if kind is None:
        raise TypeError(f"{type(model).__name__} is not the model of a registered model kind")
    if ensemble is None:
        return kind.make_forward(model)
    from .ensemble import ensemble_forward

    single = kind.make_heads_forward(model) if ensemble == "shallow" else kind.make_forward(model)
    return ensemble_forward(single, ensemble)


@functools.lru_cache(maxsize=16)
def _jitted_forward(model, ensemble: str | None) -> Callable:
    import jax

    return jax.jit(model_forward(model, ensemble))
