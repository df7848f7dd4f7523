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


#: the values of a physics switch: on, off, or "auto" (resolved from the training data)
Switch = StrictBool | Literal["auto"]
#: PhysNet's radial bases: e3x's reciprocal Bernstein polynomials, or the original's exp-normal functions
BASES = ("bernstein", "exp_normal")
#: radial basis functions of each basis when ``num_basis_functions`` is null (exp_normal: the original's 64)
DEFAULT_NUM_BASIS = {"bernstein": 16, "exp_normal": 64}


class PhysNetSettings(ModelSettings):
    """PhysNet (Unke & Meuwly, JCTC 15, 3678 (2019)): energy and forces; atomic charges, the
    dipole, PhysNet's shielded Coulomb term and D3(BJ) dispersion, each on, off or "auto"
    (resolved once when training starts, from the training data); optionally a short-range
    ZBL repulsion."""

    label: ClassVar[str] = "PhysNet"

    type: Literal["physnet"] = Field("physnet", description="the model")
    features: int = Field(64, ge=1, description="features per atom (width of every layer)")
    max_degree: int = Field(0, ge=0, description="largest degree of the features; 0 = invariant, "
                                                 ">= 1 = equivariant (spherical harmonics in the basis)")
    num_iterations: int = Field(3, ge=1, description="message-passing modules")
    basis: Literal[BASES] = Field("exp_normal", description="radial basis: exp_normal (the original's "
                                  "exp(-beta (exp(-r) - mu_k)^2) times its polynomial cutoff; on rMD17 ethanol and "
                                  "aspirin it beat bernstein by 1.8x and 3x in force error at equal epochs) or "
                                  "bernstein (e3x's reciprocal Bernstein polynomials times e3x's smooth cutoff)")
    num_basis_functions: int | None = Field(None, ge=1, description="radial basis functions; null = 16 for "
                                            "bernstein, 64 for exp_normal (the original's)")
    cutoff: float = Field(DEFAULT_CUTOFF, gt=0, description="cutoff of the message passing (A); Coulomb switches "
                          "from the shielded to the bare 1/r kernel between 0 and cutoff/2")
    num_residual: int = Field(2, ge=0, description="residual blocks in each interaction and each output block")
    max_atomic_number: int = Field(MAX_Z, ge=1, description="largest atomic number the embedding holds")
    charges: Switch = Field("auto", description="also predict atomic charges (corrected to the molecule's total "
                            "charge) and the dipole they give; auto = on when the training data carry dipoles "
                            "D or atomic charges q")
    charge_scale: StrictBool = Field(False, description="a trained per-element scale of the atomic charges (the "
                                     "original's Qscale; the per-element shift is always there)")
    coulomb: Switch = Field("auto", description="add PhysNet's shielded Coulomb energy between the atomic charges "
                            "(needs charges); auto = on when charges are")
    coulomb_cutoff: float | None = Field(None, gt=0, description="long-range cutoff of Coulomb and dispersion (A): "
                                         "null = none, every pair of a molecule (isolated molecules); a number = "
                                         "PhysNet's shifted kernel, 0 with slope 0 at this distance (large systems)")
    dispersion: Switch = Field("auto", description="add D3(BJ) dispersion with trained s6, s8, a1, a2; auto = on "
                               "when every training dataset's reference energies include dispersion")
    dispersion_functional: str = Field("hf", description="the functional whose D3(BJ) damping parameters start the "
                                       "training (hf: the original's start values)")
    repulsion: StrictBool = Field(False, description="add a ZBL universal repulsion, fully on below half the sum "
                                  "of the covalent radii, switched off smoothly by three quarters of it")
    output_heads: int = Field(1, ge=1, le=64, description="output heads (a shallow ensemble's members): set from "
                              "ensemble.size when ensemble.kind is shallow, not by hand")

    @model_validator(mode="after")
    def _consistent(self) -> PhysNetSettings:
        if self.coulomb is True and self.charges is False:
            raise SettingError("coulomb", "needs charges: set charges: true")
        if self.coulomb_cutoff is not None and not self.coulomb_cutoff > self.cutoff / 2:
            raise SettingError("coulomb_cutoff", f"must exceed cutoff/2 ({self.cutoff / 2:g}), where the shielding "
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
