"""Plain grid + ESP pairs with a geometry file: one grid file = one structure.

The grid file holds either ``x y z esp`` rows (text, ``#`` comments; or ``.npy`` of shape
``(G, 4)``), or only ``x y z`` (``.npy`` ``(G, 3)``, or text with 3 columns) with the values in
a separate file (``esp_values``: ``.npy`` or text, ``G`` numbers). The geometry (atoms) comes
from ``geometry``, any single-frame file :func:`ase.io.read` reads (Å, as ase gives it).

Default units: grid Å, ESP Hartree/e (what quantum-chemistry codes print); change them with
the converter's ``length_unit``/``esp_unit``. ``length_unit`` applies to the grid only: the
geometry is in Å whatever it says. No energy; ``Qtot`` is ``total_charge`` (default 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..structure import Structure
from ..units import SourceUnits, factor
from . import Source

DEFAULT = SourceUnits(length="Angstrom", esp="Hartree/e")


def _load_table(path: Path, field: str) -> np.ndarray:
    """A numeric 2-d table from ``.npy`` or whitespace text; DataError naming the file."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, comments="#", ndmin=2, dtype=np.float64)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"unreadable ({type(exc).__name__}: {exc})", path=path, field=field)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"expected numbers, got dtype {arr.dtype}", path=path, field=field)
    return np.asarray(arr, dtype=np.float64)


class EspGridSource(Source):
    """One grid(+ESP) file with its geometry file (and optional separate ESP file)."""

    format = "esp-grid"
    requires_energy = False

    def __init__(
        self,
        path,
        keys=None,
        *,
        geometry: str | Path | None = None,
        esp_values: str | Path | None = None,
        total_charge: float = 0.0,
        length_unit: str | None = None,
    ):
        super().__init__(path, keys)
        if geometry is None:
            raise DataError("a grid file needs its geometry file (--geometry)", path=self.path, field="R")
        self.geometry = Path(geometry)
        if not self.geometry.is_file():
            raise DataError("no such geometry file", path=self.geometry)
        self.esp_values = None if esp_values is None else Path(esp_values)
        if self.esp_values is not None and not self.esp_values.is_file():
            raise DataError("no such ESP file", path=self.esp_values)
        self.total_charge = float(total_charge)
        self.length_unit = length_unit or DEFAULT.length

    @property
    def units(self) -> SourceUnits:
        return DEFAULT

    def __iter__(self) -> Iterator[Structure]:
        import ase.io

        from .ase_formats import check_before_ase

        table = _load_table(self.path, "grid")
        if table.ndim != 2 or table.shape[1] not in (3, 4) or table.shape[0] == 0:
            raise DataError(f"expected rows of 'x y z esp' or 'x y z', got shape {table.shape}",
                            path=self.path, field="grid", index=0)
        if table.shape[1] == 4:
            if self.esp_values is not None:
                raise DataError("has an ESP column and a separate ESP file was given too", path=self.path, field="esp")
            grid, esp = table[:, :3], table[:, 3]
        else:
            if self.esp_values is None:
                raise DataError("3 columns (x y z) and no ESP file given (--esp-values)", path=self.path, field="esp")
            grid = table
            esp = _load_table(self.esp_values, "esp").reshape(-1)
            if esp.shape[0] != grid.shape[0]:
                raise DataError(f"{esp.shape[0]} ESP values for {grid.shape[0]} grid points",
                                path=self.esp_values, field="esp", index=0)
        check_before_ase(Path(self.geometry), None,
                         lambda message, **where: DataError(message, path=self.geometry, field="R", **where))
        try:
            frames = ase.io.read(self.geometry, index=":")
        except Exception as exc:  # ase raises many kinds on unreadable input
            raise DataError(f"ase.io could not read it ({type(exc).__name__}: {exc})", path=self.geometry, field="R")
        if len(frames) != 1:
            raise DataError(f"expected one geometry, found {len(frames)} frames", path=self.geometry, field="R")
        atoms = frames[0]
        # R in the grid's unit, so that the converter's one length factor serves both
        R = np.asarray(atoms.positions, dtype=np.float64) / factor("length", self.length_unit)
        yield Structure(Z=np.asarray(atoms.numbers), R=R, Qtot=self.total_charge, grid=grid, esp=esp, index=0)
