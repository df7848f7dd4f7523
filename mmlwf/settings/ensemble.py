"""The ``ensemble:`` section of an experiment (a training config): several members trained at
once in one process and one compiled step (:mod:`mmlwf.ensemble`, issue 16)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import SettingError, Settings

#: ensemble kinds: ``full`` (members with their own parameters, vmapped), ``shallow`` (one shared
#: representation with ``size`` output heads)
ENSEMBLE_KINDS = ("full", "shallow")
#: the spread loss of a shallow ensemble: ``mse`` (none: the mean's usual loss), ``nll`` (energy NLL)
ENSEMBLE_LOSSES = ("mse", "nll")


class EnsembleSettings(Settings):
    """An ensemble of models trained together; its spread over members is the uncertainty."""

    size: int = Field(1, ge=1, le=64, description="members; 1 = a single model. Member k is initialised as a "
                      "single run with training.seed + k would be; the members share the batches (the data order "
                      "of training.seed) and are trained in one compiled step. For kind shallow: the output heads")
    kind: Literal[ENSEMBLE_KINDS] = Field("full", description="full: every member has its own parameters; "
                                          "shallow: one shared PhysNet representation with size output heads (one "
                                          "parameter set, about the cost of one model to train; Kellner & Ceriotti "
                                          "2024), forces of the heads' mean energy")
    loss: Literal[ENSEMBLE_LOSSES] = Field("nll", description="shallow only: nll adds the Gaussian negative "
                                           "log-likelihood of the energy under the heads' variance, "
                                           "0.5*(log var + (E_mean - E)^2/var) per structure (eV; weight nll_weight), "
                                           "so the spread is trained to size the error, as the literature trains "
                                           "shallow ensembles (without it the heads differ only by their "
                                           "initialisation); mse: the mean's usual loss alone")
    nll_weight: float = Field(1.0, ge=0, description="shallow only: weight of the energy NLL (loss: nll)")
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

    @model_validator(mode="after")
    def _shallow_only(self) -> EnsembleSettings:
        set_here = self.SHALLOW_ONLY & self.model_fields_set
        if set_here and self.kind == "full" and self.size > 1:  # a full ensemble's members train on their own loss
            raise SettingError(min(set_here), "applies to kind: shallow only (a full ensemble's members "
                               "each train on the usual loss)")
        return self

    #: the settings that apply to a shallow ensemble only (left out of a full ensemble's record)
    SHALLOW_ONLY: ClassVar[frozenset[str]] = frozenset({"loss", "nll_weight"})
