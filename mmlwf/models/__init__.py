"""Models: PhysNet and DCMNet (flax + e3x), and the registry of model kinds
(:mod:`mmlwf.models.registry`, importable without jax).

The PhysNet names below are imported from :mod:`mmlwf.models.physnet` on first access, so
that ``import mmlwf.models.registry`` does not load jax.
"""

from __future__ import annotations

import importlib

__all__ = ["PhysNet", "batch_inputs", "build_model", "energy_and_forces", "init_params", "model_config", "pair_cutoff"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".physnet", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
