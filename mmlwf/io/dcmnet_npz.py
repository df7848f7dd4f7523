"""NPZ in the layout DCMNet users have: padded per-molecule atoms and ESP grids.

Keys (aliases as in :mod:`mmlwf.io.keys`): ``R (n, A, 3)``, ``Z (n, A)``, optional ``N (n,)``
(else the count of ``Z > 0``), ``mono (n, A)`` atomic monopoles (-> ``q``; when absent,
zeros are stored and a warning is logged), ``esp (n, G)``, grid points ``vdw_surface``
(alias ``esp_grid``) ``(n, G, 3)``, optional ``n_grid (n,)``, ``Dxyz (n, 3)`` (-> ``D``), and
optional ``E``, ``F``, ``Q``/``Qtot``.

Without ``n_grid`` the grid count of a molecule is inferred from its padding: the trailing
rows where a coordinate or the ESP is NaN, or where all three coordinates and the ESP are
exactly 0, are padding (a real point at the origin with exactly zero potential is not
expected). Default units: Å, ESP Hartree/e, dipole e·Å, energy eV (all overridable).
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..structure import Structure
from ..units import SourceUnits
from . import Source
from .bounds import check_npz_member
from .keys import resolve

log = logging.getLogger(__name__)
DEFAULT = SourceUnits(energy="eV", length="Angstrom", dipole="e*Angstrom", esp="Hartree/e")
GRID_KEYS = ("vdw_surface", "esp_grid", "grid")
ESP_KEYS = ("esp",)


def is_dcmnet_npz(files) -> bool:
    """True when an npz's member names look like the DCMNet layout (an ESP and its grid)."""
    names = set(files)
    return bool(names & set(ESP_KEYS)) and bool(names & set(GRID_KEYS))


def infer_n_grid(grid: np.ndarray, esp: np.ndarray) -> int:
    """Real grid points of one padded molecule: up to the last row that is not padding."""
    pad = np.isnan(grid).any(axis=1) | np.isnan(esp) | ((grid == 0).all(axis=1) & (esp == 0))
    real = np.flatnonzero(~pad)
    return int(real[-1]) + 1 if real.size else 0


class DcmnetNpzSource(Source):
    """A DCMNet-style padded NPZ (see the module docstring)."""

    format = "dcmnet-npz"
    requires_energy = False

    def __init__(self, path, keys=None):
        super().__init__(path, keys)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
            files = list(self._npz.files)
        except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
            raise self.fail(f"not a readable .npz archive ({type(exc).__name__}: {exc})")
        self.key = {c: resolve(files, c, self.keys) for c in ("R", "Z", "N", "E", "F", "D", "Qtot", "q")}
        self.key["grid"] = next((k for k in GRID_KEYS if k in files), None)
        self.key["esp"] = next((k for k in ESP_KEYS if k in files), None)
        self.key["n_grid"] = "n_grid" if "n_grid" in files else None
        for c, what in (("R", "positions R"), ("Z", "atomic numbers Z"), ("esp", "ESP values 'esp'"),
                        ("grid", "grid points 'vdw_surface' or 'esp_grid'")):
            if self.key[c] is None:
                raise self.fail(f"no {what} (found {files})", field=c)

    @property
    def units(self) -> SourceUnits:
        return DEFAULT

    def _get(self, canonical: str) -> np.ndarray | None:
        name = self.key[canonical]
        if name is None:
            return None
        try:
            if self._npz.zip is not None:
                check_npz_member(self._npz.zip, name, self)
            arr = self._npz[name]
        except DataError:
            raise
        except ValueError as exc:
            raise self.fail(f"cannot read without unpickling ({exc})", field=name)
        except Exception as exc:
            raise self.fail(f"truncated or corrupt member ({type(exc).__name__}: {exc})", field=name)
        if arr.dtype.kind not in "biuf":
            raise self.fail(f"expected numbers, got dtype {arr.dtype}", field=name)
        return arr

    def _shaped(self, canonical: str, n: int, *allowed: tuple) -> np.ndarray | None:
        arr = self._get(canonical)
        if arr is not None and arr.shape not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise self.fail(f"wrong shape {arr.shape}, expected {want}", field=self.key[canonical])
        return arr

    def __iter__(self) -> Iterator[Structure]:
        R = self._get("R")
        if R.ndim != 3 or R.shape[2] != 3:
            raise self.fail(f"expected shape (n, atoms, 3), got {R.shape}", field=self.key["R"])
        n, width = R.shape[:2]
        Z = self._shaped("Z", n, (n, width))
        N = self._shaped("N", n, (n,), (n, 1))
        N = (Z > 0).sum(axis=1) if N is None else N.reshape(n)
        esp = self._get("esp")
        if esp.ndim != 2 or esp.shape[0] != n:
            raise self.fail(f"expected shape ({n}, n_grid_max), got {esp.shape}", field=self.key["esp"])
        gmax = esp.shape[1]
        grid = self._shaped("grid", n, (n, gmax, 3))
        n_grid = self._shaped("n_grid", n, (n,), (n, 1))
        mono = self._shaped("q", n, (n, width))
        if mono is None:
            log.warning("%s: field 'mono': no atomic monopoles in the file: stored as zeros", self.path)
        E = self._shaped("E", n, (n,), (n, 1))
        F = self._shaped("F", n, (n, width, 3))
        D = self._shaped("D", n, (n, 3))
        Q = self._shaped("Qtot", n, (n,), (n, 1))
        for i in range(n):
            k = int(N[i])
            if not 0 < k <= width:
                raise self.fail(f"N = {k} outside 1..{width}", field=self.key["N"] or "N", index=i)
            g = infer_n_grid(grid[i], esp[i]) if n_grid is None else int(np.reshape(n_grid, n)[i])
            if not 0 < g <= gmax:
                why = "no grid points (all padding)" if n_grid is None else f"n_grid = {g} outside 1..{gmax}"
                raise self.fail(why, field="n_grid", index=i)
            yield Structure(
                Z=Z[i, :k],
                R=R[i, :k],
                E=None if E is None else np.reshape(E, n)[i],
                F=None if F is None else F[i, :k],
                Qtot=0.0 if Q is None else np.reshape(Q, n)[i],
                D=None if D is None else D[i],
                q=np.zeros(k) if mono is None else mono[i, :k],
                grid=grid[i, :g],
                esp=esp[i, :g],
                index=i,
            )
