"""The data sections of the workflow config: ``demo``, ``labels``, ``datasets`` (with their ESP
``points``, ``split`` and ``stats``) and ``splits``. One declaration per setting; the schema's
parts and the defaults that the workflow fills in come from here, and :mod:`mmlwf.split` and the
CLI take their split defaults from :data:`DEFAULT_SPLIT`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import MinLen
from pydantic import Field, field_validator, model_validator

from .. import element_energies as _ee
from ..convert import DEFAULT_DISPERSION
from ..dipoles import DEFAULT_DIPOLE_REFERENCE, DIPOLE_REFERENCES
from ..errors import ConfigError
from ..esp.points import MODES
from ..io import ESP_FORMATS, FORMATS
from ..io.keys import CANONICAL_KEYS
from .base import Name, Settings, SettingError, optional

#: the cutoff (Å) of the message passing and of the neighbour counts where none is given: the
#: one home of this default (PhysNet's ``cutoff``, ``stats.cutoff``, the loader, the CLI)
DEFAULT_CUTOFF = 5.0
#: the formats a dataset may name (``auto``: from each file's extension)
DATASET_FORMATS = ("auto", FORMATS[0], "extxyz", *FORMATS[1:])
#: the formats the labeller reads its geometries from (no ESP formats)
LABEL_FORMATS = tuple(f for f in DATASET_FORMATS if f not in ESP_FORMATS)
GROUP_BY = ("none", "formula")

Text = Annotated[str, MinLen(1)]
Files = Annotated[list[Text], MinLen(1)]


class DemoSettings(Settings):
    """Demo data made without download by rule demo_data (results/demo/{name}.extxyz): conformers of
    small molecules from a short Langevin MD, labelled by a teacher."""

    molecules: Files = Field(["H2O", "CH4", "NH3", "CH3OH"], description="names that ase.build.molecule knows")
    n_per_molecule: int = Field(8, ge=1, description="conformers sampled per molecule")
    seed: int = Field(0, ge=0, description="random seed; the same settings give a byte-identical file")
    temperature_K: float = Field(300.0, gt=0, description="MD temperature (Kelvin)")
    steps_between: int = Field(20, ge=1, description="MD steps (0.5 fs) before the first sample and between samples")
    teacher: Literal["gfn2-xtb", "emt"] = Field(
        "gfn2-xtb", description="reference method labelling the conformers: gfn2-xtb (GFN2-xTB through tblite: "
        "energies, forces, charges, dipoles) or emt (ASE's EMT, H C N O, energies and forces)")


class PointsSettings(Settings):
    """Where the ESP is sampled around each molecule."""

    mode: Literal[MODES] = Field("shell", description="shell (between inner and outer multiples of the vdW radii) "
                                                      "or density (SCF or cube density window)")
    inner: float | None = Field(None, description="exclusion multiple of the vdW radii (null = 1.4 for shell, "
                                                  "1.0 for density)")
    outer: float = Field(2.0, description="outer multiple of the vdW radii (shell)")
    spacing: float = Field(0.5, gt=0, description="step of the cubic grid of candidate points (Angstrom; the "
                                                  "labeller only, cubes bring their grid)")
    density_window: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2, max_length=2)] = Field(
        [1.0e-4, 1.0e-3], description="low and high density (e/Bohr^3), for density mode")
    max_points: int | None = Field(None, ge=1, description="keep at most this many points per structure "
                                                           "(null = all)")
    seed: int = Field(0, ge=0, description="seed of that subsampling")


class SplitSettings(Settings):
    """The train/valid/test split of a dataset (results/datasets/{name}/split.npz)."""

    valid: float = Field(0.1, ge=0, description="validation size, a fraction (< 1) or a count (>= 1)")
    test: float = Field(0.1, ge=0, description="test size, a fraction (< 1) or a count (>= 1)")
    seed: int = Field(0, ge=0, description="the same dataset, sizes and seed give a byte-identical split")
    group_by: Literal[GROUP_BY] = Field("none", description="formula = every conformer of one composition on "
                                                           "one side")

    @model_validator(mode="after")
    def _sizes(self) -> SplitSettings:
        fractions = [v for v in (self.valid, self.test) if 0 < v < 1]
        if sum(fractions) >= 1:
            raise SettingError("", f"valid + test fractions ({' + '.join(map(str, fractions))}) leave no "
                                   "training data; they must sum to less than 1")
        for key in ("valid", "test"):
            value = getattr(self, key)
            if value >= 1 and value != int(value):
                raise SettingError(key, f"{value} is neither a fraction (< 1) nor a count")
        return self


#: the split a dataset gets without settings (``splits.default`` unless the config gives one)
DEFAULT_SPLIT = SplitSettings()


class StatsSettings(Settings):
    """Statistics of the training split (results/datasets/{name}/stats.json) and the per-element
    reference energies that models' energies are relative to. ``cutoff``, ``batch_size`` and
    ``n_shapes`` are deprecated and unused (batch shapes are the training loader's: training.batch_atoms
    or batch_size, and the model's cutoff); they are accepted so that existing configs still validate."""

    element_energies: str | dict[str, float] = Field(
        _ee.DEFAULT, description="per-element reference energies: a file of isolated atoms (any format convert "
        "reads, one atom per structure, one per element; the references are then atomisation-referenced), "
        "numbers per element symbol in eV ({H: -13.57, C: -1025.3}), fit (least squares on the element counts; "
        "refused when the training compositions do not determine them, e.g. one molecule), or auto (fit, with a "
        "warning where the compositions do not determine them)")
    cutoff: float = Field(DEFAULT_CUTOFF, gt=0, description="unused (deprecated); the neighbour lists use the "
                                                            "model's cutoff")
    batch_size: int | None = Field(None, ge=1, description="unused (deprecated); batch budgets follow "
                                   "training.batch_atoms or training.batch_size")
    n_shapes: int = Field(4, ge=1, le=8, description="unused (deprecated)")

    @field_validator("element_energies", mode="before")
    @classmethod
    def _element_energies(cls, value):
        try:
            return _ee.check_choice(value, "")
        except ConfigError as exc:
            raise SettingError("element_energies", str(exc).removeprefix(": ")) from None


class DatasetSettings(Settings):
    """A dataset: converted to results/datasets/{name}/packed and validated
    (results/datasets/{name}/validation.json)."""

    sources: Files = Field(description="input files, concatenated in order (paths relative to the working "
                                       "directory)")
    format: Literal[DATASET_FORMATS] = Field("auto", description="input format; auto = from each file's "
                                                                 "extension")
    energy_unit: str | None = Field(None, description="energy unit of the sources (eV, meV, Hartree, kcal/mol, "
                                                      "kJ/mol, Rydberg); null = the format's default")
    length_unit: str | None = Field(None, description="length unit of the sources (Angstrom, Bohr, nm); null = "
                                                      "the format's default")
    dipole_unit: str | None = Field(None, description="dipole unit of the sources (e*Angstrom, Debye, e*Bohr); "
                                                      "null = the format's default")
    esp_unit: str | None = Field(None, description="ESP unit of ESP sources (Hartree/e, V, kcal/(mol*e)); null = "
                                                   "the format's default (Hartree/e)")
    density: list[Text] = Field([], description="ESP from cube files - one density cube per potential cube of "
                                "`sources`, in order; selects points by density (points.mode density)")
    geometry: list[Text] = Field([], description="ESP grid files (format esp-grid) - the geometry file of each "
                                 "grid file (or one for all)")
    points: PointsSettings | None = optional("point selection for cube sources")
    total_charge: float | None = Field(None, description="total charge (e) of cube / grid structures (null = 0)")
    keys: dict[Literal[CANONICAL_KEYS], Text] = Field({}, description="canonical field name -> the name the "
                                                      "sources use for it (e.g. E -> energy_wb97x)")
    split: str | SplitSettings = Field("default", description="the train/valid/test split "
                                       "(results/datasets/{name}/split.npz): the name of an entry of `splits`, "
                                       "or the settings themselves")
    dispersion: bool | None = Field(
        None, description=f"whether the reference energies include dispersion (DFT-D3, GFN2-xTB: true; HF or "
        f"plain DFT: false); null = what a packed source records, else {str(DEFAULT_DISPERSION).lower()}. Models "
        "add D3 only when true, since D3 added to a reference without dispersion gives a wrong long-range tail")
    dipole_reference: Literal[(None, *DIPOLE_REFERENCES)] = Field(
        None, description="the point the sources' dipoles are taken about (origin, as pyscf and tblite give them; "
        f"centroid; center_of_mass); null = what a packed source records, else {DEFAULT_DIPOLE_REFERENCE}. "
        "Stored dipoles are about the centroid of the atoms, converted as D_c = D_p - Qtot (c - p), which "
        "changes charged molecules only")
    stats: StatsSettings = Field(StatsSettings(), description="statistics of the training split "
                                                              "(results/datasets/{name}/stats.json) and the "
                                                              "element reference energies")


class LabelSettings(Settings):
    """A reference ESP dataset computed with pyscf (rule label)."""

    sources: Files = Field(description="geometry files (any format the converter reads), in order")
    format: Literal[LABEL_FORMATS] = Field("auto", description="input format; auto = from each file's extension")
    method: str = Field("HF", description="HF or a pyscf DFT functional (B3LYP, PBE0, ...)")
    basis: str = Field("6-31g*", description="pyscf basis set name (6-31g* is the textbook ESP-fitting level)")
    stride: int = Field(1, ge=1, description="label every stride-th structure of the sources")
    max_structures: int | None = Field(None, ge=1, description="label at most this many structures (null = all)")
    charges: Literal[None, "mulliken"] = Field(None, description="also store atomic charges (mulliken) or not "
                                                                 "(null)")
    points: PointsSettings | None = optional("ESP point selection")


__all__ = ["DATASET_FORMATS", "DEFAULT_CUTOFF", "DEFAULT_SPLIT", "GROUP_BY", "LABEL_FORMATS", "DatasetSettings",
           "DemoSettings", "LabelSettings", "Name", "PointsSettings", "SplitSettings", "StatsSettings"]
