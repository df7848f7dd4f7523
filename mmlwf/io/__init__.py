"""Readers that yield one :class:`~mmlwf.structure.Structure` at a time.

Formats: ``npz`` (PhysNet-style padded arrays, common aliases, sGDML), ``ase`` (extxyz and
anything :func:`ase.io.iread` reads), ``db`` (ASE databases), ``hdf5`` (ANI-style groups
or flat padded arrays); ESP data for DCMNet: ``cube`` (Gaussian cube files,
:mod:`.cube`), ``esp-grid`` (grid + ESP text/npy with a geometry file, :mod:`.esp_grid`),
``dcmnet-npz`` (:mod:`.dcmnet_npz`; detected from the keys of an ``.npz``); ``packed`` (a
packed dataset directory, e.g. one written by ``mmlwf label``: :mod:`.packed_source`). Readers yield
values in the units of the source; each reader reports the units it assumes
(``Source.units``), which the user may override.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import ConfigError, DataError
from ..structure import Structure, StructureBlock
from ..units import SourceUnits
from .keys import CANONICAL_KEYS, parse_key_map

log = logging.getLogger(__name__)
FORMATS = ("npz", "ase", "db", "hdf5", "cube", "esp-grid", "dcmnet-npz", "packed")
#: formats of ESP data (structures with grid + esp, possibly without energy)
ESP_FORMATS = ("cube", "esp-grid", "dcmnet-npz")
#: formats whose readers take options (``open_source(..., **options)``)
_WITH_OPTIONS = ("cube", "esp-grid")

#: documented default units per format (overridable with --energy-unit/--length-unit)
DEFAULT_UNITS: dict[str, SourceUnits] = {
    "npz": SourceUnits(energy="eV", length="Angstrom"),  # PhysNet convention
    "sgdml": SourceUnits(energy="kcal/mol", length="Angstrom"),  # sGDML convention
    "ase": SourceUnits(energy="eV", length="Angstrom"),  # ASE convention
    "db": SourceUnits(energy="eV", length="Angstrom"),
    "hdf5": SourceUnits(energy="eV", length="Angstrom"),  # unless the file says otherwise
    "cube": SourceUnits(length="Bohr", esp="Hartree/e"),  # Å when the voxel counts are negative
    "esp-grid": SourceUnits(length="Angstrom", esp="Hartree/e"),
    "dcmnet-npz": SourceUnits(energy="eV", length="Angstrom", esp="Hartree/e"),
    "packed": SourceUnits(energy="eV", length="Angstrom", dipole="e*Angstrom", esp="V"),  # canonical
}

_EXTENSIONS = {".npz": "npz", ".db": "db", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
               ".cube": "cube", ".cub": "cube", ".npy": "esp-grid"}


class Source:
    """One input file: its format, assumed units and a lazy structure iterator."""

    format: str = ""
    #: False for ESP-only formats: their structures may lack an energy (E is then not stored)
    requires_energy: bool = True
    #: whether the dipole-magnitude warning was given (once per source)
    _warned_magnitude: bool = False
    #: reference facts the source records itself (a packed dataset's manifest:
    #: ``includes_dispersion``, ``dipole_reference``); the converter's options state them otherwise
    recorded: Mapping[str, object] = {}

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
    def format_name(self) -> str:
        """The format as a user names it (the manifest records it): :attr:`format` here."""
        return self.format

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

    def dipole_magnitude(self, name: str, shape) -> None:
        """A dipole found under ``name`` by its alias that holds one number per structure
        (QM9's ``dipole_moment``): a magnitude, not a vector, so D is not stored. Raises when
        the user mapped ``D`` to it; else warns once per source."""
        if "D" in self.keys:
            raise self.fail(f"'{name}' holds one number per structure (shape {tuple(shape)}), a dipole magnitude, "
                            "not a dipole vector", field="D")
        if not self._warned_magnitude:
            self._warned_magnitude = True
            log.warning("%s: field 'D': '%s' holds a dipole magnitude, not a vector: not stored "
                        "(--key D=none silences this)", self.path, name)


def detect_format(path: str | os.PathLike) -> str:
    """Format name from the file extension (a directory is a packed dataset; everything
    unknown goes to ``ase``)."""
    if Path(path).is_dir():
        return "packed"
    return _EXTENSIONS.get(Path(path).suffix.lower(), "ase")


def open_source(
    path: str | os.PathLike,
    fmt: str | None = None,
    keys: Mapping[str, str] | None = None,
    **options,
) -> Source:
    """Open ``path`` with the reader for ``fmt`` (detected from the extension when None; an
    ``.npz`` holding ``esp`` and ``vdw_surface``/``esp_grid`` is ``dcmnet-npz``).

    ``options`` go to the ``cube`` reader (``density=``, ``points=``, ``total_charge=``,
    ``index=``, ``length_unit=``) and the ``esp-grid`` reader (``geometry=``,
    ``esp_values=``, ``total_charge=``, ``length_unit=``); other formats ignore them.
    """
    from .ase_formats import AseDbSource, AseSource
    from .cube import CubeSource
    from .dcmnet_npz import DcmnetNpzSource
    from .esp_grid import EspGridSource
    from .hdf5 import Hdf5Source
    from .packed_source import PackedSource
    from .padded import NpzSource

    detected = fmt is None
    fmt = (fmt or detect_format(path)).lower()
    named = None if detected else fmt
    if fmt in ("extxyz", "xyz"):
        fmt = "ase"
    if detected and fmt == "npz" and _npz_is_dcmnet(path):
        fmt = "dcmnet-npz"
    readers = {"npz": NpzSource, "ase": AseSource, "db": AseDbSource, "hdf5": Hdf5Source,
               "cube": CubeSource, "esp-grid": EspGridSource, "dcmnet-npz": DcmnetNpzSource,
               "packed": PackedSource}
    if fmt not in readers:
        raise ConfigError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)}, extxyz)")
    if fmt in _WITH_OPTIONS:
        return readers[fmt](path, keys, **options)
    if fmt == "ase":  # --format extxyz/xyz: read as extxyz (which reads plain xyz too), whatever the suffix
        return AseSource(path, keys, ase_format="extxyz" if named in ("extxyz", "xyz") else None, named=named)
    return readers[fmt](path, keys)


def _npz_is_dcmnet(path: str | os.PathLike) -> bool:
    """Whether an npz's member names are the DCMNet layout (False when unreadable: the npz
    reader then reports the problem)."""
    import zipfile

    from .dcmnet_npz import is_dcmnet_npz

    try:
        with zipfile.ZipFile(path) as zf:
            return is_dcmnet_npz(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    except (OSError, zipfile.BadZipFile):
        return False


__all__ = [
    "FORMATS",
    "ESP_FORMATS",
    "DEFAULT_UNITS",
    "Source",
    "detect_format",
    "open_source",
    "parse_key_map",
]
