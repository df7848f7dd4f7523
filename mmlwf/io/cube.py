"""Gaussian cube files: an electrostatic potential on a grid, optionally with a density cube.

One potential cube is one structure: the atoms, and the potential at the grid points
kept by :func:`mmlwf.esp.points.select` (only points outside every atom's scaled vdW
sphere): with a matching density cube, the points whose density lies in the window
(default 1e-4..1e-3 e/Bohr^3), else the 1.4-2.0 vdW shell (Merz-Kollman).

Format: two comment lines; ``natoms ox oy oz [nval]``; three lines ``n_i ax_i ay_i az_i``
(voxel vectors, any orientation: non-orthogonal grids are fine); one line per atom
``Z charge x y z``; then ``n0*n1*n2`` values, the last index fastest. Lengths are Bohr, or Å
when the voxel counts are negative (a length unit given by the user overrides both); potential Hartree/e, density e/Bohr^3. Orbital cubes
(negative ``natoms``) and cubes with several values per point are refused: they hold no
potential. The cube carries no energy and no total charge: ``E`` stays absent and ``Qtot``
is ``total_charge`` (default 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..esp.points import PointSettings, select
from ..structure import Structure
from ..units import SourceUnits, factor
from . import Source


@dataclass
class Cube:
    """A parsed cube in its own length unit (``unit``: "Bohr" or "Angstrom")."""

    Z: np.ndarray  # (n,)
    R: np.ndarray  # (n, 3)
    origin: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3): row i is the step along grid index i
    values: np.ndarray  # (n0, n1, n2)
    unit: str = "Bohr"

    def points(self) -> np.ndarray:
        """Grid point coordinates ``(n0*n1*n2, 3)``, in the order of ``values.reshape(-1)``."""
        n0, n1, n2 = self.values.shape
        i, j, k = np.meshgrid(np.arange(n0), np.arange(n1), np.arange(n2), indexing="ij")
        ijk = np.stack([i.reshape(-1), j.reshape(-1), k.reshape(-1)], axis=1).astype(np.float64)
        return self.origin + ijk @ self.axes


def read_cube(path: str | Path) -> Cube:
    """Parse a Gaussian cube file; :class:`DataError` naming the file on anything malformed."""
    path = Path(path)

    def fail(msg: str, field: str | None = None) -> DataError:
        return DataError(msg, path=path, field=field)

    try:
        with open(path) as fh:
            lines = [fh.readline(), fh.readline(), fh.readline()]
            head = lines[2].split()
            if len(head) < 4:
                raise fail("line 3 must be 'natoms x0 y0 z0', got " + repr(lines[2].strip()), "header")
            natoms = int(head[0])
            if natoms < 0:
                raise fail("an orbital cube (negative atom count): it holds orbitals, not a potential", "header")
            if natoms == 0:
                raise fail("no atoms in the header", "header")
            if len(head) >= 5 and int(head[4]) != 1:
                raise fail(f"{head[4]} values per grid point: only single-valued cubes hold a potential", "header")
            origin = np.array([float(x) for x in head[1:4]])
            counts, axes = [], []
            for _ in range(3):
                parts = fh.readline().split()
                if len(parts) != 4:
                    raise fail("expected 3 lines 'n ax ay az' after the origin line", "header")
                counts.append(int(parts[0]))
                axes.append([float(x) for x in parts[1:]])
            atoms = []
            for a in range(natoms):
                parts = fh.readline().split()
                if len(parts) != 5:
                    raise fail(f"atom line {a} must be 'Z charge x y z'", "atoms")
                atoms.append([float(x) for x in parts])
            text = fh.read()
    except UnicodeDecodeError:
        raise fail("not a text cube file")
    except ValueError as exc:
        raise fail(f"malformed header ({exc})", "header")
    signs = {c < 0 for c in counts}
    if len(signs) != 1 or 0 in counts:
        raise fail(f"voxel counts {counts} must be all positive (Bohr) or all negative (Angstrom)", "header")
    unit = "Angstrom" if signs.pop() else "Bohr"
    shape = tuple(abs(c) for c in counts)
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError as exc:
        raise fail(f"non-numeric grid value ({exc})", "values")
    n = int(np.prod(shape))
    if values.shape[0] != n:
        what = "truncated" if values.shape[0] < n else "too long"
        raise fail(f"{values.shape[0]} grid values, the header says {shape} = {n}: {what}", "values")
    if not np.all(np.isfinite(values)):
        raise fail("grid values contain NaN or Inf", "values")
    atoms = np.asarray(atoms, dtype=np.float64)
    Z = atoms[:, 0]
    if np.any(Z != np.round(Z)) or np.any(Z < 1):
        raise fail(f"atomic numbers must be positive integers, got {Z.tolist()}", "atoms")
    axes = np.asarray(axes, dtype=np.float64)
    if abs(np.linalg.det(axes)) < 1e-12:
        raise fail("voxel axes are linearly dependent", "header")
    return Cube(Z=Z.astype(np.int64), R=atoms[:, 2:5], origin=origin, axes=axes, values=values.reshape(shape), unit=unit)


class CubeSource(Source):
    """One potential cube (Hartree/e) = one structure; ``density``: the matching density cube."""

    format = "cube"
    requires_energy = False

    def __init__(
        self,
        path,
        keys=None,
        *,
        density: str | Path | None = None,
        points: PointSettings | None = None,
        total_charge: float = 0.0,
        index: int = 0,
        length_unit: str | None = None,
    ):
        super().__init__(path, keys)
        self.density = None if density is None else Path(density)
        if self.density is not None and not self.density.is_file():
            raise DataError("no such density cube", path=self.density)
        if points is None:
            points = PointSettings(mode="density" if self.density is not None else "shell")
        if points.mode == "density" and self.density is None:
            raise DataError("density point selection needs a density cube (--density)", path=self.path)
        self.points = points
        self.total_charge = float(total_charge)
        self.index = int(index)
        # a unit given by the user overrides the file's (and is used for the point selection too)
        self._unit: str | None = length_unit

    @property
    def units(self) -> SourceUnits:
        if self._unit is None:
            with open(self.path, "rb") as fh:  # the unit is the sign of the voxel counts
                for _ in range(3):
                    fh.readline()
                first = fh.readline().split()
            # a malformed file reads as Bohr here; reading it raises the error naming the problem
            self._unit = "Angstrom" if first and first[0].startswith(b"-") else "Bohr"
        return SourceUnits(length=self._unit, esp="Hartree/e")

    def __iter__(self) -> Iterator[Structure]:
        cube = read_cube(self.path)
        to_ang = factor("length", self._unit or cube.unit)
        pts = cube.points()
        rho = None
        if self.points.mode == "density":
            dens = read_cube(self.density)
            same = (
                dens.values.shape == cube.values.shape
                and dens.unit == cube.unit
                and np.allclose(dens.origin, cube.origin, atol=1e-5)
                and np.allclose(dens.axes, cube.axes, atol=1e-6)
            )
            if not same:
                raise DataError(f"grid differs from the potential cube {self.path.name}", path=self.density, field="grid")
            if not (np.array_equal(dens.Z, cube.Z) and np.allclose(dens.R, cube.R, atol=1e-5)):
                raise DataError(f"atoms differ from the potential cube {self.path.name}", path=self.density, field="atoms")
            rho = dens.values.reshape(-1)
        try:
            keep = select(pts * to_ang, cube.Z, cube.R * to_ang, self.points, density=rho, index=self.index)
        except DataError as exc:
            raise exc.at(path=self.path, index=0)
        if keep.size == 0:
            raise DataError("no grid point passes the point selection (grid too small or too coarse?)",
                            path=self.path, field="grid", index=0)
        yield Structure(
            Z=cube.Z,
            R=cube.R,
            Qtot=self.total_charge,
            grid=pts[keep],
            esp=cube.values.reshape(-1)[keep],
            index=0,
        )
