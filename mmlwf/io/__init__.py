"""Readers that yield one :class:`~mmlwf.structure.Structure` at a time.

Formats: ``npz`` (PhysNet-style padded arrays, common aliases, sGDML), ``ase`` (extxyz and
anything :func:`ase.io.iread` reads), ``db`` (ASE databases), ``hdf5`` (ANI-style groups
or flat padded arrays). Readers yield values in the units of the source; each reader
reports the units it assumes (``Source.units``), which the user may override.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import ConfigError, DataError
from ..structure import Structure, StructureBlock
from ..units import SourceUnits
from .keys import CANONICAL_KEYS, parse_key_map

FORMATS = ("npz", "ase", "db", "hdf5")

#: documented default units per format (overridable with --energy-unit/--length-unit)
DEFAULT_UNITS: dict[str, SourceUnits] = {
    "npz": SourceUnits(energy="eV", length="Angstrom"),  # PhysNet convention
    "sgdml": SourceUnits(energy="kcal/mol", length="Angstrom"),  # sGDML convention
    "ase": SourceUnits(energy="eV", length="Angstrom"),  # ASE convention
    "db": SourceUnits(energy="eV", length="Angstrom"),
    "hdf5": SourceUnits(energy="eV", length="Angstrom"),  # unless the file says otherwise
}

_EXTENSIONS = {".npz": "npz", ".db": "db", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}


class Source:
    """One input file: its format, assumed units and a lazy structure iterator."""

    format: str = ""

    def __init__(self, path: str | os.PathLike, keys: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.keys = dict(keys or {})
        unknown = sorted(set(self.keys) - set(CANONICAL_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown key '{unknown[0]}' in key map (known: {', '.join(CANONICAL_KEYS)})"
            )
        if not self.path.exists():
            raise DataError("no such file", path=self.path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise DataError("empty file", path=self.path)

    @property
    def units(self) -> SourceUnits:
        """Units the source is stored in, as far as the format or file says."""
        return DEFAULT_UNITS[self.format]

    def __iter__(self) -> Iterator[Structure]:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks(self) -> "Iterator[StructureBlock] | None":
        """The structures as :class:`~mmlwf.structure.StructureBlock` s (the block-wise fast
        path of formats stored as arrays), or None where the reader has only ``__iter__``."""
        return None

    def fail(self, message: str, field: str | None = None, index: int | None = None) -> DataError:
        return DataError(message, path=self.path, field=field, index=index)


def detect_format(path: str | os.PathLike) -> str:
    """Format name from the file extension (everything unknown goes to ``ase``)."""
    return _EXTENSIONS.get(Path(path).suffix.lower(), "ase")


def open_source(
    path: str | os.PathLike,
    fmt: str | None = None,
    keys: Mapping[str, str] | None = None,
) -> Source:
    """Open ``path`` with the reader for ``fmt`` (detected from the extension when None)."""
    from .ase_formats import AseDbSource, AseSource
    from .hdf5 import Hdf5Source
    from .padded import NpzSource

    fmt = (fmt or detect_format(path)).lower()
    if fmt in ("extxyz", "xyz"):
        fmt = "ase"
    readers = {"npz": NpzSource, "ase": AseSource, "db": AseDbSource, "hdf5": Hdf5Source}
    if fmt not in readers:
        raise ConfigError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)}, extxyz)")
    return readers[fmt](path, keys)


__all__ = [
    "FORMATS",
    "DEFAULT_UNITS",
    "Source",
    "detect_format",
    "open_source",
    "parse_key_map",
]
