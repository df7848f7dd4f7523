"""One molecular structure as readers yield it, with shape and value checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .constants import MAX_Z, Z_RANGE
from .errors import DataError
from .units import SourceUnits

#: optional per-structure fields and their per-atom trailing shapes
OPTIONAL_FIELDS = ("F", "D", "q", "grid", "esp")


@dataclass
class Structure:
    """A molecule: ``Z (n,)``, ``R (n,3)``, energy ``E`` and optional extras.

    Readers yield structures in the units of their source; :meth:`to_canonical`
    converts them. ``index`` is the position in the source file (for messages).
    """

    Z: np.ndarray
    R: np.ndarray
    E: float | None = None
    F: np.ndarray | None = None
    Qtot: float = 0.0
    D: np.ndarray | None = None
    q: np.ndarray | None = None
    grid: np.ndarray | None = None
    esp: np.ndarray | None = None
    index: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.Z.shape[0])

    def present(self) -> tuple[str, ...]:
        """Names of the optional fields this structure carries."""
        return tuple(name for name in OPTIONAL_FIELDS if getattr(self, name) is not None)

    def checked(self, path: str, *, require_energy: bool = True) -> "Structure":
        """Coerce dtypes and check shapes and values; raise :class:`DataError` on any problem."""
        i = self.index

        def fail(fieldname: str, msg: str) -> DataError:
            return DataError(msg, path=path, field=fieldname, index=i)

        def floats(fieldname: str, value) -> np.ndarray:
            return _floats(value, fieldname, fail)

        Z = np.asarray(self.Z)
        if Z.ndim != 1 or Z.shape[0] == 0:
            raise fail("Z", f"expected a non-empty 1-d array of atomic numbers, got shape {Z.shape}")
        if Z.dtype.kind not in "iu":
            if Z.dtype.kind == "f" and np.all(np.isfinite(Z)) and np.all(Z == np.round(Z)):
                Z = Z.astype(np.int64)
            else:
                raise fail("Z", f"atomic numbers must be integers, got dtype {Z.dtype}")
        bad = np.flatnonzero((Z < 1) | (Z > MAX_Z))
        if bad.size:
            raise fail("Z", f"atomic number {int(Z[bad[0]])} at atom {int(bad[0])} is outside {Z_RANGE}")
        n = Z.shape[0]
        self.Z = Z.astype(np.int32)
        self.R = _per_atom(self.R, n, (3,), "R", fail, required=True)
        self.F = _per_atom(self.F, n, (3,), "F", fail)
        self.q = _per_atom(self.q, n, (), "q", fail)
        if self.D is not None:
            D = floats("D", self.D).reshape(-1)
            if D.shape != (3,):
                raise fail("D", f"dipole must have 3 components, got shape {np.shape(self.D)}")
            if not np.all(np.isfinite(D)):
                raise fail("D", "contains NaN or Inf")
            self.D = D
        if self.E is None:
            if require_energy:
                raise fail("E", "missing energy")
        else:
            E = floats("E", self.E)
            if E.size != 1:
                raise fail("E", f"expected one energy per structure, got shape {E.shape}")
            E = float(E.reshape(()))
            if not np.isfinite(E):
                raise fail("E", "energy is NaN or Inf")
            self.E = E
        Q = floats("Qtot", self.Qtot)
        if Q.size != 1 or not np.isfinite(Q).all():
            raise fail("Qtot", f"total charge must be one finite number, got {self.Qtot!r}")
        self.Qtot = float(Q.reshape(()))
        if (self.grid is None) != (self.esp is None):
            raise fail("esp", "grid points and ESP values must come together")
        if self.grid is not None:
            grid = floats("grid", self.grid)
            esp = floats("esp", self.esp).reshape(-1)
            if grid.ndim != 2 or grid.shape[1] != 3 or grid.shape[0] != esp.shape[0]:
                raise fail("grid", f"grid {grid.shape} and esp {esp.shape} do not match")
            if not (np.all(np.isfinite(grid)) and np.all(np.isfinite(esp))):
                raise fail("esp", "contains NaN or Inf")
            self.grid, self.esp = grid, esp
        return self

    def to_canonical(self, units: SourceUnits) -> "Structure":
        """Return a copy converted from ``units`` to the canonical units (Å, eV, e, V)."""
        lf, ef = units.length_factor, units.energy_factor
        return Structure(
            Z=self.Z,
            R=self.R * lf,
            E=None if self.E is None else self.E * ef,
            F=None if self.F is None else self.F * (ef / lf),
            Qtot=self.Qtot,
            D=None if self.D is None else self.D * units.dipole_factor,
            q=self.q,
            grid=None if self.grid is None else self.grid * lf,
            esp=None if self.esp is None else self.esp * units.esp_factor,
            index=self.index,
            extras=self.extras,
        )


def _floats(value, name, fail) -> np.ndarray:
    """``value`` as float64, or the error naming the field (text where numbers belong)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise fail(name, f"not numbers ({exc})") from None


def _per_atom(value, n, trailing, name, fail, required=False):
    if value is None:
        if required:
            raise fail(name, "missing")
        return None
    arr = _floats(value, name, fail)
    if arr.shape != (n, *trailing):
        raise fail(name, f"expected shape {(n, *trailing)} for {n} atoms, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        where = np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
        raise fail(name, f"contains NaN or Inf (atom {int(where[0])})")
    return arr


# ----------------------------------------------------------------------------- blocks

#: dtypes the block path takes as they are (anything else goes the per-structure way)
_NUMERIC = "iuf"


@dataclass
class StructureBlock:
    """Consecutive structures of one source as flat arrays, in the source's units.

    The block-wise fast path of the readers: ``n_atoms (k,)``; per atom ``Z (A,)``,
    ``R (A, 3)`` and optional ``F (A, 3)``, ``q (A,)``; per structure ``E (k,)`` and optional
    ``Qtot (k,)``, ``D (k, 3)``, where ``A = n_atoms.sum()``. ``start`` is the source index of
    the first structure. ``valid`` is False when the reader's own per-structure checks
    (counts, padding) failed for some structure of the block.

    ``structures()`` yields the very same structures one at a time, the reader's
    per-structure checks included: whenever :meth:`is_clean` says no, callers take that
    path, so that the error raised (file, field, structure index, message) is exactly the
    one the per-structure path gives. Blocks carry no ESP grids.
    """

    n_atoms: np.ndarray
    Z: np.ndarray | None
    R: np.ndarray | None
    E: np.ndarray | None
    structures: Callable[[], Iterator[Structure]]
    F: np.ndarray | None = None
    Qtot: np.ndarray | None = None
    D: np.ndarray | None = None
    q: np.ndarray | None = None
    start: int = 0
    valid: bool = True

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def atoms(self) -> int:
        return int(self.Z.shape[0]) if self.Z is not None else int(self.n_atoms.sum())

    def present(self) -> tuple[str, ...]:
        """Names of the optional fields the block's structures carry (as Structure.present)."""
        return tuple(name for name in OPTIONAL_FIELDS if getattr(self, name, None) is not None)

    def is_clean(self, *, require_energy: bool = True) -> bool:
        """True when every structure of the block passes :meth:`Structure.checked` (the same
        checks, vectorised); False on any problem or any unusual dtype."""
        if not self.valid or self.Z is None or self.R is None:
            return False
        k = len(self)
        counts = self.n_atoms
        if k == 0 or counts.ndim != 1 or counts.dtype.kind not in "iu" or int(counts.min()) < 1:
            return False
        A = int(counts.sum())
        Z = self.Z
        if Z.shape != (A,) or Z.dtype.kind not in _NUMERIC:
            return False
        if Z.dtype.kind == "f" and not (np.isfinite(Z).all() and (Z == np.round(Z)).all()):
            return False
        if not (Z.min() >= 1 and Z.max() <= MAX_Z):
            return False
        for name, shape in (("R", (A, 3)), ("F", (A, 3)), ("q", (A,)), ("D", (k, 3)), ("Qtot", (k,))):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.shape != shape or arr.dtype.kind not in _NUMERIC:
                return False
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return False
        if self.E is None:
            return not require_energy
        E = self.E
        if E.shape != (k,) or E.dtype.kind not in _NUMERIC:
            return False
        return bool(E.dtype.kind != "f" or np.isfinite(E).all())

    def to_canonical(self, units: SourceUnits) -> "StructureBlock":
        """The block converted to the canonical units, value for value as
        ``Structure.checked().to_canonical()`` computes it (float64 products), so that the
        stored float32/float64 bytes are identical. Call only on a clean block."""
        lf, ef = units.length_factor, units.energy_factor
        k = len(self)
        return StructureBlock(
            n_atoms=self.n_atoms.astype(np.int64, copy=False),
            Z=self.Z.astype(np.int32, copy=False),
            R=_scaled(self.R, lf),
            E=None if self.E is None else self.E.astype(np.float64) * ef,
            F=None if self.F is None else _scaled(self.F, ef / lf),
            Qtot=np.zeros(k) if self.Qtot is None else self.Qtot.astype(np.float64, copy=False),
            D=None if self.D is None else _scaled(self.D, units.dipole_factor),
            q=None if self.q is None else _scaled(self.q, 1.0),
            start=self.start,
            structures=self.structures,
        )


def _scaled(arr: np.ndarray, factor: float) -> np.ndarray:
    """``asarray(arr, float64) * factor`` (what the per-structure path computes), without the
    float64 round trip where it cannot change a value: float32/float64 data times 1.0."""
    if factor == 1.0 and arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float64) * factor
