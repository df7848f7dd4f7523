"""Readers built on ASE: every format :func:`ase.io.iread` reads, and ASE databases.

Energies, forces, dipoles and charges come from the attached calculator results (what
extxyz ``energy=``/``forces`` and most codes' outputs give), else from ``atoms.info`` /
``atoms.arrays`` (or a database row's key-value pairs and ``data``) under the canonical
names, their aliases, or the names given with ``--key``.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from ..structure import Structure
from . import Source
from .keys import ALIASES

# calculator result names for each canonical field
_RESULTS = {"E": ("energy", "free_energy"), "F": ("forces",), "D": ("dipole",), "q": ("charges",)}
_PER_ATOM = ("F", "q")


def _lookup(canonical: str, keys: Mapping[str, str], *stores: Mapping) -> object | None:
    names = (keys[canonical],) if canonical in keys else ALIASES[canonical]
    for store in stores:
        for name in names:
            if name in store and store[name] is not None:
                return store[name]
    return None


def structure_from_atoms(atoms, index: int, keys: Mapping[str, str], extra: Mapping | None = None) -> Structure:
    """A :class:`Structure` from an ``ase.Atoms`` (and optional extra key-value stores)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    info, arrays = atoms.info, atoms.arrays
    extra = extra or {}
    values = {}
    for canonical in ("E", "F", "D", "q", "Qtot"):
        value = None
        if canonical not in keys:
            for name in _RESULTS.get(canonical, ()):
                if name in results:
                    value = results[name]
                    break
        if value is None:
            stores = (arrays, extra) if canonical in _PER_ATOM else (info, extra)
            value = _lookup(canonical, keys, *stores)
            if value is None and canonical in keys and canonical != "Qtot":
                value = _lookup(canonical, keys, info, arrays)
        values[canonical] = value
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


class AseSource(Source):
    """Any file :mod:`ase.io` reads (extxyz, xyz, traj, Gaussian/ORCA/VASP outputs ...), lazily."""

    format = "ase"

    def __init__(self, path, keys=None, ase_format: str | None = None, named: str | None = None):
        super().__init__(path, keys)
        self.ase_format = ase_format
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
                yield structure_from_atoms(atoms, i, self.keys)
        except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError, AttributeError) as exc:
            if isinstance(exc, StopIteration):
                return
            raise self.fail(f"ase.io could not read it ({type(exc).__name__}: {exc})")
        except ase.io.formats.UnknownFileTypeError as exc:
            raise self.fail(f"unknown file type ({exc}); pass --format")


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
                s = structure_from_atoms(atoms, i, self.keys, store)
                if s.Qtot == 0.0 and "Qtot" not in self.keys and "charge" in row:
                    s.Qtot = float(row.charge)
                yield s
        except Exception as exc:
            from ..errors import DataError

            if isinstance(exc, DataError):
                raise
            raise self.fail(f"not a readable ASE database ({type(exc).__name__}: {exc})")
