"""Padded per-frame arrays: PhysNet/mmml-style NPZ, sGDML NPZ, and flat HDF5 layouts.

``R (n, A, 3)``, ``Z (n, A)`` (or one shared ``z (A,)``), optional ``N (n,)`` (else the
count of ``Z > 0``), ``E (n,)`` or ``(n, 1)``, optional ``F (n, A, 3)``, ``D (n, 3)``,
``Q``/``Qtot (n,)`` and atomic charges ``mono (n, A)``. Arrays are read in slices of
``chunk`` frames, so memory follows the slice, not the file (for HDF5; an NPZ member is
decompressed whole by numpy).
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import DataError
from ..structure import Structure
from ..units import SourceUnits
from . import DEFAULT_UNITS, Source
from .keys import resolve

# the optional per-frame fields and their canonical names in Structure
_OPTIONAL = {"F": "F", "D": "D", "Qtot": "Qtot", "q": "q"}


class PaddedArrays:
    """Padded frame arrays behind a ``name -> array-like`` mapping (np arrays or h5py datasets)."""

    def __init__(self, source: Source, arrays: Mapping, keys: Mapping[str, str], chunk: int = 4096):
        self.source = source
        self.arrays = arrays
        self.chunk = int(chunk)
        names = list(arrays.keys())
        self.key = {c: resolve(names, c, keys) for c in ("R", "Z", "N", "E", *_OPTIONAL)}
        for canonical in keys:
            if canonical in self.key and self.key[canonical] is None:
                raise source.fail(f"key '{keys[canonical]}' given for {canonical} is not in the file", field=canonical)
        if self.key["R"] is None:
            raise source.fail(f"no positions (looked for R, positions, coordinates; found {names})", field="R")
        if self.key["Z"] is None:
            raise source.fail(f"no atomic numbers (looked for Z, z, atomic_numbers, numbers; found {names})", field="Z")
        if self.key["E"] is None:
            raise source.fail("missing energies (looked for E, energy, energies; use --key E=NAME)", field="E")
        R = arrays[self.key["R"]]
        if len(R.shape) != 3 or R.shape[2] != 3:
            raise source.fail(f"expected shape (n_frames, n_atoms, 3), got {R.shape}", field=self.key["R"])
        self.n, self.width = int(R.shape[0]), int(R.shape[1])
        Z = arrays[self.key["Z"]]
        self.shared_z = len(Z.shape) == 1
        expected_z = (self.width,) if self.shared_z else (self.n, self.width)
        if tuple(Z.shape) != expected_z:
            raise source.fail(f"expected shape {expected_z} to match positions {R.shape}, got {Z.shape}", field=self.key["Z"])
        self._check_shape("E", [(self.n,), (self.n, 1)])
        self._check_shape("N", [(self.n,), (self.n, 1)])
        self._check_shape("F", [(self.n, self.width, 3)])
        self._check_shape("D", [(self.n, 3)])
        self._check_shape("Qtot", [(self.n,), (self.n, 1)])
        self._check_shape("q", [(self.n, self.width)])

    def _check_shape(self, canonical: str, allowed: list[tuple]) -> None:
        name = self.key[canonical]
        if name is None:
            return
        shape = tuple(self.arrays[name].shape)
        if shape not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise self.source.fail(f"wrong shape {shape}, expected {want}", field=name)

    def _slice(self, canonical: str, a: int, b: int) -> np.ndarray | None:
        name = self.key[canonical]
        if name is None:
            return None
        arr = np.asarray(self.arrays[name][a:b])
        if arr.dtype.kind not in "biuf":
            raise self.source.fail(f"expected numbers, got dtype {arr.dtype}", field=name)
        return arr

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Structure]:
        zkey = self.key["Z"]
        shared = np.asarray(self.arrays[zkey][...]) if self.shared_z else None
        for a in range(0, self.n, self.chunk):
            b = min(a + self.chunk, self.n)
            R = self._slice("R", a, b)
            Z = np.broadcast_to(shared, (b - a, self.width)) if self.shared_z else self._slice("Z", a, b)
            E = self._slice("E", a, b).reshape(b - a)
            N = self._slice("N", a, b)
            n_real = (Z > 0).sum(axis=1)
            if N is None:
                N = n_real
            else:
                N = N.reshape(b - a)
            extra = {c: self._slice(c, a, b) for c in _OPTIONAL}
            for j in range(b - a):
                i = a + j
                n = int(N[j])
                if not 0 < n <= self.width:
                    raise self.source.fail(f"N = {n} outside 1..{self.width}", field=self.key["N"] or "N", index=i)
                z = Z[j, :n]
                if np.any(z <= 0):
                    k = int(np.flatnonzero(z <= 0)[0])
                    raise self.source.fail(f"Z = {int(z[k])} among the real atoms (atom {k} of N = {n})", field=zkey, index=i)
                if int(n_real[j]) != n:
                    raise self.source.fail(
                        f"inconsistent N: N = {n} but {int(n_real[j])} atoms have Z > 0", field=self.key["N"] or "N", index=i
                    )
                s = Structure(Z=z, R=R[j, :n], E=E[j], index=i)
                F = extra["F"]
                if F is not None:
                    s.F = F[j, :n]
                if extra["D"] is not None:
                    s.D = extra["D"][j]
                if extra["Qtot"] is not None:
                    s.Qtot = extra["Qtot"][j]
                if extra["q"] is not None:
                    s.q = extra["q"][j, :n]
                yield s


class NpzSource(Source):
    """PhysNet-style padded NPZ (also sGDML npz with one shared ``z``)."""

    format = "npz"

    def __init__(self, path, keys=None):
        super().__init__(path, keys)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
            raise self.fail(f"not a readable .npz file ({type(exc).__name__}: {exc})")
        if not hasattr(self._npz, "files"):
            raise self.fail("a .npy array, not an .npz archive of named arrays")
        self._cache: dict[str, np.ndarray] = {}
        self.padded = PaddedArrays(self, _LazyNpz(self), self.keys)

    def _member(self, name: str) -> np.ndarray:
        if name not in self._cache:
            try:
                self._cache[name] = self._npz[name]
            except ValueError as exc:  # object arrays need pickle: refused
                raise self.fail(f"cannot read without unpickling ({exc})", field=name)
            except Exception as exc:
                raise self.fail(f"truncated or corrupt member ({type(exc).__name__}: {exc})", field=name)
        return self._cache[name]

    @property
    def is_sgdml(self) -> bool:
        files = set(self._npz.files)
        return "type" in files and "z" in files and "R" in files and "Z" not in files

    @property
    def units(self) -> SourceUnits:
        if not self.is_sgdml:
            return DEFAULT_UNITS["npz"]
        units = DEFAULT_UNITS["sgdml"]
        meta = {}
        for key, kind in (("e_unit", "energy"), ("r_unit", "length")):
            if key in self._npz.files:
                value = self._member(key)
                meta[kind] = str(value.item().decode() if value.dtype.kind == "S" else value.item())
        return units.replace(**meta)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self.padded)


class _LazyNpz(Mapping):
    """Mapping view of an npz whose members are read on first use (for shapes too)."""

    def __init__(self, source: NpzSource):
        self.source = source

    def __getitem__(self, name: str) -> np.ndarray:
        return self.source._member(name)

    def __iter__(self):
        return iter(self.source._npz.files)

    def __len__(self) -> int:
        return len(self.source._npz.files)
