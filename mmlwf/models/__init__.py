"""Models (DESIGN §6): PhysNet (flax + e3x)."""

from .physnet import (
    PhysNet,
    batch_inputs,
    build_model,
    energy_and_forces,
    init_params,
    model_config,
    pair_cutoff,
)

__all__ = ["PhysNet", "batch_inputs", "build_model", "energy_and_forces", "init_params", "model_config", "pair_cutoff"]
