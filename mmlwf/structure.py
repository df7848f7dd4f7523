"""One molecular structure as readers yield it, with shape and value checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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

        Z = np.asarray(self.Z)
        if Z.ndim != 1 or Z.shape[0] == 0:
            raise fail("Z", f"expected a non-empty 1-d array of atomic numbers, got shape {Z.shape}")
        if Z.dtype.kind not in "iu":
            if Z.dtype.kind == "f" and np.all(np.isfinite(Z)) and np.all(Z == np.round(Z)):
                Z = Z.astype(np.int64)
            else:
                raise fail("Z", f"atomic numbers must be integers, got dtype {Z.dtype}")
        bad = np.flatnonzero((Z < 1) | (Z > 118))
        if bad.size:
            raise fail("Z", f"atomic number {int(Z[bad[0]])} at atom {int(bad[0])} is outside 1-118")
        n = Z.shape[0]
        self.Z = Z.astype(np.int32)
        self.R = _per_atom(self.R, n, (3,), "R", fail, required=True)
        self.F = _per_atom(self.F, n, (3,), "F", fail)
        self.q = _per_atom(self.q, n, (), "q", fail)
        if self.D is not None:
            D = np.asarray(self.D, dtype=np.float64).reshape(-1)
            if D.shape != (3,):
                raise fail("D", f"dipole must have 3 components, got shape {np.shape(self.D)}")
            if not np.all(np.isfinite(D)):
                raise fail("D", "contains NaN or Inf")
            self.D = D
        if self.E is None:
            if require_energy:
                raise fail("E", "missing energy")
        else:
            E = np.asarray(self.E, dtype=np.float64)
            if E.size != 1:
                raise fail("E", f"expected one energy per structure, got shape {E.shape}")
            E = float(E.reshape(()))
            if not np.isfinite(E):
                raise fail("E", "energy is NaN or Inf")
            self.E = E
        Q = np.asarray(self.Qtot, dtype=np.float64)
        if Q.size != 1 or not np.isfinite(Q).all():
            raise fail("Qtot", f"total charge must be one finite number, got {self.Qtot!r}")
        self.Qtot = float(Q.reshape(()))
        if (self.grid is None) != (self.esp is None):
            raise fail("esp", "grid points and ESP values must come together")
        if self.grid is not None:
            grid = np.asarray(self.grid, dtype=np.float64)
            esp = np.asarray(self.esp, dtype=np.float64).reshape(-1)
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


def _per_atom(value, n, trailing, name, fail, required=False):
    if value is None:
        if required:
            raise fail(name, "missing")
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n, *trailing):
        raise fail(name, f"expected shape {(n, *trailing)} for {n} atoms, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        where = np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
        raise fail(name, f"contains NaN or Inf (atom {int(where[0])})")
    return arr
