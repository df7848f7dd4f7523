"""The ``model:`` section: one declaration per model type, chosen by ``type``.

The flax modules (:mod:`mmlwf.models.physnet`, :mod:`mmlwf.models.dcmnet`) take their field
defaults from here; this module imports neither jax nor flax, so the workflow checks a config
before any job without loading them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from ..constants import MAX_Z
from ..errors import did_you_mean, shown
from .base import Settings, SettingError, parse
from .data import DEFAULT_CUTOFF


class ModelSettings(Settings):
    """Base of the model declarations: ``type`` names the model (any case)."""

    label: ClassVar[str]  # the model's name in messages, e.g. "PhysNet"

    @field_validator("type", mode="before", check_fields=False)
    @classmethod
    def _lower_type(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def fields(self) -> dict[str, Any]:
        """The settings as keyword arguments of the model (without ``type``)."""
        return self.model_dump(exclude={"type"})


class PhysNetSettings(ModelSettings):
    """PhysNet: energy and forces; optionally atomic charges, the dipole, Coulomb and ZBL terms."""

    label: ClassVar[str] = "PhysNet"

    type: Literal["physnet"] = Field("physnet", description="the model")
    features: int = Field(64, ge=1, description="features per atom (width of every layer)")
    max_degree: int = Field(0, ge=0, description="largest degree of the features; 0 = invariant, "
                                                 ">= 1 = equivariant (spherical harmonics in the basis)")
    num_iterations: int = Field(3, ge=1, description="message-passing modules")
    num_basis_functions: int = Field(16, ge=1, description="radial basis functions")
    cutoff: float = Field(DEFAULT_CUTOFF, gt=0, description="cutoff of the message passing (A); also where the ZBL "
                                                 "repulsion is switched off")
    num_residual: int = Field(2, ge=0, description="residual blocks in each interaction and each output block")
    max_atomic_number: int = Field(MAX_Z, ge=1, description="largest atomic number the embedding holds")
    charges: StrictBool = Field(False, description="also predict atomic charges (corrected to the molecule's "
                                                   "total charge) and the dipole they give")
    coulomb: StrictBool = Field(False, description="add a damped Coulomb energy between the atomic charges "
                                                   "(needs charges)")
    repulsion: StrictBool = Field(False, description="add a ZBL universal repulsion")
    coulomb_cutoff: float = Field(10.0, gt=0, description="where the Coulomb term is switched off (A); with "
                                                          "coulomb, more than cutoff/2")

    @model_validator(mode="after")
    def _consistent(self) -> PhysNetSettings:
        if self.coulomb and not self.charges:
            raise SettingError("coulomb", "needs charges: set charges: true")
        if self.coulomb and not self.coulomb_cutoff > self.cutoff / 2:
            raise SettingError("coulomb_cutoff", f"must exceed cutoff/2 ({self.cutoff / 2:g}), where the damping "
                                                 f"of the Coulomb term ends, got {self.coulomb_cutoff!r}")
        return self


class DCMNetSettings(ModelSettings):
    """DCMNet: n_dcm point charges per atom fitted to the electrostatic potential."""

    label: ClassVar[str] = "DCMNet"

    type: Literal["dcmnet"] = Field("dcmnet", description="the model")
    n_dcm: int = Field(2, ge=1, description="distributed charges per atom")
    features: int = Field(32, ge=1, description="features per atom (width of every layer)")
    max_degree: int = Field(1, ge=1, description="largest degree of the equivariant features (the "
                                                 "displacements come from the l=1 part)")
    num_iterations: int = Field(2, ge=1, description="message-passing modules")
    num_basis_functions: int = Field(16, ge=1, description="radial basis functions")
    cutoff: float = Field(4.0, gt=0, description="cutoff of the message passing (A)")
    max_displacement: float = Field(0.5, gt=0, description="largest distance of a charge from its atom (A)")
    max_atomic_number: int = Field(MAX_Z, ge=1, description="largest atomic number the embedding holds")


class _RegisteredModels(Mapping[str, type[ModelSettings]]):
    """The declarations of the kinds in :mod:`mmlwf.models.registry` (read on each use, so
    kinds registered later, e.g. by plugins, are included)."""

    def _kinds(self) -> dict:
        from ..models.registry import kinds

        return kinds()

    def __getitem__(self, name: str) -> type[ModelSettings]:
        return self._kinds()[name].settings_class

    def __iter__(self):
        return iter(self._kinds())

    def __len__(self) -> int:
        return len(self._kinds())

    def __repr__(self) -> str:
        return f"MODELS({', '.join(self)})"


#: every model type's declaration by its ``type`` name (from the model registry)
MODELS: Mapping[str, type[ModelSettings]] = _RegisteredModels()
#: the model of a ``model:`` section (or ``model.json``) without ``type``
DEFAULT_MODEL = "physnet"


def model_class(values: Mapping[str, Any] | None) -> type[ModelSettings]:
    """The declaration that ``values["type"]`` names (the default model without ``type``)."""
    name = (values or {}).get("type", DEFAULT_MODEL)
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise SettingError("type", f"unknown model {shown(name)}{did_you_mean(name, MODELS)} "
                                   f"(known: {', '.join(MODELS)})")
    return MODELS[key]


def model_settings(values: Mapping[str, Any] | None) -> ModelSettings:
    """The checked settings of the model that ``values`` describes (:class:`SettingError` otherwise)."""
    if values is not None and not isinstance(values, Mapping):
        raise SettingError("", f"must be a mapping of settings, got {shown(values)}")
    return parse(model_class(values), values)
