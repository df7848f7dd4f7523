"""The ``ensemble:`` section of an experiment (a training config): several members trained at
once in one process and one compiled step (:mod:`mmlwf.ensemble`, issue 16)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Settings

#: ensemble kinds: ``full`` (members with their own parameters, vmapped)
ENSEMBLE_KINDS = ("full",)


class EnsembleSettings(Settings):
    """An ensemble of models trained together; its spread over members is the uncertainty."""

    size: int = Field(1, ge=1, le=64, description="members; 1 = a single model. Member k is initialised as a "
                      "single run with training.seed + k would be; the members share the batches (the data order "
                      "of training.seed) and are trained in one compiled step")
    kind: Literal[ENSEMBLE_KINDS] = Field("full", description="full: every member has its own parameters")
    calibrate: bool = Field(True, description="fit the factors that scale the energy and force spreads on the "
                            "validation split after training (model.json ensemble.scale)")
