"""Readers built on ASE: every format :func:`ase.io.iread` reads, and ASE databases.

Energies, forces, dipoles and charges come from the attached calculator results (what
extxyz ``energy=``/``forces`` and most codes' outputs give), else from ``atoms.info`` /
``atoms.arrays`` (or a database row's key-value pairs and ``data``) under the canonical
names, their aliases, or the names given with ``--key``.

Before ASE parses an (ext)xyz file, :func:`~.xyz_scan.check_xyz_layout` checks its count lines
(truncation, absurd counts); an old pickle-based ``.traj`` is refused without being unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import DataError
from ..structure import Structure
from . import Source
from .keys import ALIASES, DROP
from .xyz_scan import check_xyz_layout

# calculator result names for each canonical field
_RESULTS = {"E": ("energy", "free_energy"), "F": ("forces",), "D": ("dipole",), "q": ("charges",)}
_PER_ATOM = ("F", "q")
#: ASE formats whose count lines are checked before parsing
_XYZ_FORMATS = ("extxyz", "xyz")
#: the first bytes of ASE's old pickle-based trajectories (ASE reads them only through pickle)
_PICKLE_TRAJECTORY = b"PickleTrajectory"


def _lookup(canonical: str, keys: Mapping[str, str], *stores: Mapping) -> tuple[str | None, object | None]:
    """``(name, value)`` of the first store holding ``canonical`` (``(None, None)`` if none)."""
    if keys.get(canonical) == DROP:
        return None, None
    names = (keys[canonical],) if canonical in keys else ALIASES[canonical]
    for store in stores:
        for name in names:
            if name in store and store[name] is not None:
                return name, store[name]
    return None, None


def structure_from_atoms(atoms, index: int, keys: Mapping[str, str], extra: Mapping | None = None,
                         source: Source | None = None) -> Structure:
    """A :class:`Structure` from an ``ase.Atoms`` (and optional extra key-value stores); a
    dipole magnitude found by alias is reported to ``source`` and not stored."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    info, arrays = atoms.info, atoms.arrays
    extra = extra or {}
    values, names = {}, {}
    for canonical in ("E", "F", "D", "q", "Qtot"):
        name, value = None, None
        if canonical not in keys:
            for name in _RESULTS.get(canonical, ()):
                if name in results:
                    value = results[name]
                    break
        if value is None:
            stores = (arrays, extra) if canonical in _PER_ATOM else (info, extra)
            name, value = _lookup(canonical, keys, *stores)
            if value is None and canonical in keys and canonical != "Qtot":
                name, value = _lookup(canonical, keys, info, arrays)
        values[canonical], names[canonical] = value, name
    if source is not None and values["D"] is not None and np.size(values["D"]) == 1:
        source.dipole_magnitude(names["D"], np.shape(values["D"]))
        values["D"] = None
    qtot = values["Qtot"]
    if qtot is None:
        qtot = 0.0
    return Structure(
        Z=np.asarray(atoms.numbers),
        R=np.asarray(atoms.positions),
        E=values["E"],
        F=values["F"],
        D=values["D"],
        q=values["q"],
        Qtot=qtot,
        index=index,
    )


def check_before_ase(path: Path, ase_format: str | None, fail: Callable[..., DataError]) -> None:
    """What ASE would read badly, refused before it reads: a directory given as (ext)xyz, an
    old pickle-based trajectory (never unpickled), (ext)xyz count lines that the file does not
    hold (:func:`~.xyz_scan.check_xyz_layout`). ``fail(message, index=...)`` builds the error."""
    import ase.io.formats

    if path.is_dir():
        if ase_format in _XYZ_FORMATS:
            raise fail(f"a directory, not an {ase_format} file")
        return
    with open(path, "rb") as fh:
        if fh.read(len(_PICKLE_TRAJECTORY)) == _PICKLE_TRAJECTORY:
            raise fail("an old pickle-based ASE trajectory, refused: reading it means unpickling it, which can run "
                       "code from the file; if you trust the file, convert it to the current format with "
                       "'python -m ase.io.trajectory FILE' (which unpickles it)")
    guessed = ase_format
    if guessed is None:
        try:
            guessed = ase.io.formats.filetype(str(path))
        except ase.io.formats.UnknownFileTypeError:
            return  # ASE reports it when it reads
    if guessed in _XYZ_FORMATS:
        check_xyz_layout(path, fail)


class AseSource(Source):
    """Any file :mod:`ase.io` reads (extxyz, xyz, traj, Gaussian/ORCA/VASP outputs ...), lazily."""

    format = "ase"

    def __init__(self, path, keys=None, ase_format: str | None = None, named: str | None = None):
        super().__init__(path, keys)
        self.ase_format = ase_format
        check_before_ase(self.path, ase_format, self.fail)
        self.named = named

    @property
    def format_name(self) -> str:
        """The format the user named (``--format extxyz``), else the one :mod:`ase.io`
        detects (``extxyz``, ``traj``, ``gaussian-out`` ...), else ``ase``."""
        if self.named not in (None, "ase"):
            return self.named
        if self.ase_format:
            return self.ase_format
        from ase.io.formats import UnknownFileTypeError, filetype

        try:
            return filetype(str(self.path))
        except (UnknownFileTypeError, OSError, ValueError):
            return self.format

    def __iter__(self) -> Iterator[Structure]:
        import ase.io

        try:
            frames = ase.io.iread(self.path, index=":", format=self.ase_format)
            for i, atoms in enumerate(frames):
                yield structure_from_atoms(atoms, i, self.keys, source=self)
        except DataError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, StopIteration, UnicodeDecodeError, AttributeError) as exc:
            if isinstance(exc, StopIteration):
                return
            raise self.fail(f"ase.io could not read it ({type(exc).__name__}: {exc})")
        except ase.io.formats.UnknownFileTypeError as exc:
            raise self.fail(f"unknown file type ({exc}); pass --format")
        except OSError as exc:  # ase's format errors (XYZError, InvalidULMFileError ...) are OSErrors
            raise self.fail(f"ase.io could not read it ({type(exc).__name__}: {exc})")
        except MemoryError:
            raise self.fail("ase.io could not read it: it declares more data than memory holds (a damaged "
                            "header?)") from None


class AseDbSource(Source):
    """An ASE database (``.db``); energies/forces from the rows or their ``data``."""

    format = "db"

    def __iter__(self) -> Iterator[Structure]:
        import ase.db

        try:
            db = ase.db.connect(str(self.path), type="db")
            rows = db.select()
            for i, row in enumerate(rows):
                atoms = row.toatoms()
                store = dict(row.key_value_pairs)
                store.update(dict(row.data))
                s = structure_from_atoms(atoms, i, self.keys, store, source=self)
                if s.Qtot == 0.0 and "Qtot" not in self.keys and "charge" in row:
                    s.Qtot = float(row.charge)
                yield s
        except Exception as exc:
            if isinstance(exc, DataError):
                raise
            raise self.fail(f"not a readable ASE database ({type(exc).__name__}: {exc})")
