"""The ``ensemble:`` section of an experiment (a training config): several members trained at
once in one process and one compiled step (:mod:`mmlwf.ensemble`, issue 16)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SettingError, Settings

#: ensemble kinds: ``full`` (members with their own parameters, vmapped)
ENSEMBLE_KINDS = ("full",)


class EnsembleSettings(Settings):
    """An ensemble of models trained together; its spread over members is the uncertainty."""

    size: int = Field(1, ge=1, le=64, description="members; 1 = a single model. Member k is initialised as a "
                      "single run with training.seed + k would be; the members share the batches (the data order "
                      "of training.seed) and are trained in one compiled step")
    kind: Literal[ENSEMBLE_KINDS] = Field("full", description="full: every member has its own parameters")
    bootstrap: bool = Field(False, description="train each member on its own bootstrap sample of the training "
                            "split (as many structures drawn with replacement, seeded by training.seed and the member), "
                            "applied as per-member weights on the shared batches; full ensembles of 2 or more members")
    calibrate: bool = Field(True, description="fit the factors that scale the energy and force spreads on the "
                            "validation split after training (model.json ensemble.scale)")

    @model_validator(mode="after")
    def _bootstrap_needs_members(self) -> EnsembleSettings:
        if self.bootstrap and self.size < 2:
            raise SettingError("bootstrap", "needs an ensemble of 2 or more members (size)")
        if self.bootstrap and self.kind != "full":
            raise SettingError("bootstrap", f"needs kind: full (each member its own parameters), not {self.kind}")
        return self
