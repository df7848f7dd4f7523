"""Padded per-frame arrays: PhysNet/mmml-style NPZ, sGDML NPZ, and flat HDF5 layouts.

``R (n, A, 3)``, ``Z (n, A)`` (or one shared ``z (A,)``), optional ``N (n,)`` (else the
count of ``Z > 0``), ``E (n,)`` or ``(n, 1)``, optional ``F (n, A, 3)``, ``D (n, 3)``,
``Q``/``Qtot (n,)`` and atomic charges ``mono (n, A)``. Arrays are read in slices of
``chunk`` frames (fewer for wide frames: at most ``SLICE_ROWS`` padded atom rows), so
memory follows the slice, not the file (for HDF5; an NPZ member is decompressed whole by
numpy).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from ..errors import DataError
from ..structure import Structure, StructureBlock
from ..units import SourceUnits
from . import DEFAULT_UNITS, Source
from .bounds import check_npz_member
from .keys import DROP, resolve

#: most padded atom rows (frames x width) read in one slice: bounds the memory of a slice
#: (and of a block) whatever the frame width
SLICE_ROWS = 1 << 20

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
            if canonical in self.key and self.key[canonical] is None and keys[canonical] != DROP:
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
        self.chunk = slice_length(self.chunk, self.width)
        Z = arrays[self.key["Z"]]
        self.shared_z = len(Z.shape) == 1
        expected_z = (self.width,) if self.shared_z else (self.n, self.width)
        if tuple(Z.shape) != expected_z:
            raise source.fail(f"expected shape {expected_z} to match positions {R.shape}, got {Z.shape}", field=self.key["Z"])
        self._check_shape("E", [(self.n,), (self.n, 1)])
        self._check_shape("N", [(self.n,), (self.n, 1)])
        self._check_shape("F", [(self.n, self.width, 3)])
        if self.key["D"] is not None and tuple(arrays[self.key["D"]].shape) in ((self.n,), (self.n, 1)):
            source.dipole_magnitude(self.key["D"], arrays[self.key["D"]].shape)
            self.key["D"] = None
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
        try:
            arr = np.asarray(self.arrays[name][a:b])
        except OSError as exc:  # an HDF5 chunk that cannot be read (corrupt, truncated)
            raise self.source.fail(f"cannot read frames {a}..{b - 1} ({exc})", field=name, index=a)
        if arr.dtype.kind not in "biuf":
            raise self.source.fail(f"expected numbers, got dtype {arr.dtype}", field=name)
        return arr

    def __len__(self) -> int:
        return self.n

    def _shared_z(self) -> np.ndarray | None:
        return np.asarray(self.arrays[self.key["Z"]][...]) if self.shared_z else None

    def _read(self, a: int, b: int, shared: np.ndarray | None) -> dict:
        """Frames ``a:b`` of every array (a slice each), plus the count of ``Z > 0``."""
        R = self._slice("R", a, b)
        Z = np.broadcast_to(shared, (b - a, self.width)) if self.shared_z else self._slice("Z", a, b)
        E = self._slice("E", a, b).reshape(b - a)
        N = self._slice("N", a, b)
        n_real = (Z > 0).sum(axis=1)
        N = n_real if N is None else N.reshape(b - a)
        extra = {c: self._slice(c, a, b) for c in _OPTIONAL}
        return {"R": R, "Z": Z, "E": E, "N": N, "n_real": n_real, **extra}

    def _frames(self, d: dict, a: int, b: int) -> Iterator[Structure]:
        """The structures of frames ``a:b`` one by one, with the per-frame checks."""
        zkey = self.key["Z"]
        R, Z, E, N, n_real = d["R"], d["Z"], d["E"], d["N"], d["n_real"]
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
            F = d["F"]
            if F is not None:
                s.F = F[j, :n]
            if d["D"] is not None:
                s.D = d["D"][j]
            if d["Qtot"] is not None:
                s.Qtot = d["Qtot"][j]
            if d["q"] is not None:
                s.q = d["q"][j, :n]
            yield s

    def __iter__(self) -> Iterator[Structure]:
        shared = self._shared_z()
        for a in range(0, self.n, self.chunk):
            b = min(a + self.chunk, self.n)
            yield from self._frames(self._read(a, b, shared), a, b)

    def blocks(self) -> Iterator[StructureBlock]:
        """The frames as :class:`StructureBlock` s of ``chunk`` frames (the fast path of
        :meth:`__iter__`: same slices, same structures, the padding dropped at once)."""
        shared = self._shared_z()
        for a in range(0, self.n, self.chunk):
            b = min(a + self.chunk, self.n)
            d = self._read(a, b, shared)
            yield self._block(d, a, b)

    def _block(self, d: dict, a: int, b: int) -> StructureBlock:
        def structures(d=d, a=a, b=b):
            return self._frames(d, a, b)

        N, Z = d["N"], d["Z"]
        k = b - a
        # the per-frame checks together: 0 < N <= width and exactly the first N atoms have Z > 0
        valid = N.dtype.kind in "iu" and Z.dtype.kind in "iuf" and bool(((N > 0) & (N <= self.width)).all())
        if valid:
            real = np.arange(self.width)[None, :] < N[:, None]
            valid = bool(np.array_equal(Z > 0, real))
        if not valid:
            return StructureBlock(n_atoms=np.zeros(0, np.int64), Z=None, R=None, E=None,
                                  structures=structures, start=a, valid=False)
        rows = np.flatnonzero(real)  # padded (frame, atom) rows of the real atoms, in order

        def atoms(arr):
            return None if arr is None else arr.reshape(k * self.width, *arr.shape[2:])[rows]

        return StructureBlock(
            n_atoms=N.astype(np.int64, copy=False),
            Z=atoms(Z if not self.shared_z else np.ascontiguousarray(Z)),
            R=atoms(d["R"]),
            E=d["E"],
            F=atoms(d["F"]),
            q=atoms(d["q"]),
            D=d["D"],
            Qtot=None if d["Qtot"] is None else d["Qtot"].reshape(k),
            start=a,
            structures=structures,
        )


def slice_length(chunk: int, width: int) -> int:
    """Frames per slice: ``chunk``, or fewer so that a slice holds at most ``SLICE_ROWS``
    atom rows."""
    return max(1, min(int(chunk), SLICE_ROWS // max(int(width), 1)))


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
                if self._npz.zip is not None:
                    check_npz_member(self._npz.zip, name, self)
                self._cache[name] = self._npz[name]
            except DataError:
                raise
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

    def blocks(self) -> Iterator[StructureBlock]:
        return self.padded.blocks()


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
