"""Canonical units and conversion factors.

Stored and computed in: length Å, energy eV, force eV/Å, charge e, dipole e·Å,
electrostatic potential V (= eV/e). Factors come from :mod:`ase.units` (CODATA).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ase import units as _u

from .errors import ConfigError, did_you_mean

CANONICAL = {
    "length": "Angstrom",
    "energy": "eV",
    "force": "eV/Angstrom",
    "charge": "e",
    "dipole": "e*Angstrom",
    "esp": "V",
}

# value in unit X times factor = value in canonical unit
LENGTH = {"angstrom": 1.0, "a": 1.0, "ang": 1.0, "bohr": _u.Bohr, "nm": 10.0}
ENERGY = {
    "ev": 1.0,
    "mev": 1.0e-3,
    "hartree": _u.Hartree,
    "ha": _u.Hartree,
    "kcal/mol": _u.kcal / _u.mol,
    "kj/mol": _u.kJ / _u.mol,
    "rydberg": _u.Rydberg,
    "ry": _u.Rydberg,
}
DIPOLE = {
    "e*angstrom": 1.0,
    "eangstrom": 1.0,
    "e*a": 1.0,
    "debye": _u.Debye,
    "d": _u.Debye,
    "e*bohr": _u.Bohr,
    "au": _u.Bohr,
}
ESP = {"v": 1.0, "hartree/e": _u.Hartree, "au": _u.Hartree, "kcal/mol/e": _u.kcal / _u.mol,
       "kcal/(mol*e)": _u.kcal / _u.mol}

#: reports show dipoles in Debye: 1 e·Å = 4.80320 D (ase.units.Debye, CODATA)
DEBYE_PER_E_ANGSTROM = 1.0 / _u.Debye

_TABLES = {"length": LENGTH, "energy": ENERGY, "dipole": DIPOLE, "esp": ESP}


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("·", "*").replace("Å".lower(), "angstrom")


def factor(kind: str, unit: str) -> float:
    """Factor converting ``unit`` of quantity ``kind`` to the canonical unit."""
    table = _TABLES[kind]
    key = _norm(unit)
    if key not in table:
        raise ConfigError(f"unknown {kind} unit '{unit}'{did_you_mean(key, table)}; "
                          f"known (in any case): {', '.join(sorted(table))}")
    return table[key]


@dataclass(frozen=True)
class SourceUnits:
    """Units a source file is stored in; forces are energy/length of these."""

    energy: str = "eV"
    length: str = "Angstrom"
    dipole: str = "e*Angstrom"
    esp: str = "V"

    def __post_init__(self) -> None:
        for kind in _TABLES:  # fail early on a typo
            factor(kind, getattr(self, kind))

    @property
    def energy_factor(self) -> float:
        return factor("energy", self.energy)

    @property
    def length_factor(self) -> float:
        return factor("length", self.length)

    @property
    def force_factor(self) -> float:
        return self.energy_factor / self.length_factor

    @property
    def dipole_factor(self) -> float:
        return factor("dipole", self.dipole)

    @property
    def esp_factor(self) -> float:
        return factor("esp", self.esp)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["force"] = f"{self.energy}/{self.length}"
        return d

    def replace(self, **changes: str | None) -> "SourceUnits":
        kept = {k: v for k, v in changes.items() if v is not None}
        return SourceUnits(**{**asdict(self), **kept})
