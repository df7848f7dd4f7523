"""The D3 reference tables (``d3_tables.npz``), indexed by atomic number, row 0 for padding.

The file is produced by ``devtools/make_d3_tables.py`` from the sources of simple-dftd3 1.7.0
(Grimme et al., JCP 132, 154104 (2010); JCC 32, 1456 (2011)); it holds plain arrays and is
read with ``allow_pickle=False``. Lengths in bohr, C6 in hartree bohr^6, as in the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

TABLE_FILE = "d3_tables.npz"


@dataclass(frozen=True)
class D3Tables:
    """Tables over ``Z = 0..max_z`` (Z = 0: padding, one reference, zero C6, zero radii)."""

    max_z: int
    #: (Z,) number of reference systems of each element
    n_ref: np.ndarray
    #: (Z, R) reference coordination numbers (entries past ``n_ref`` unused)
    ref_cn: np.ndarray
    #: (Z, Z, R, R) reference C6 of element pairs, hartree bohr^6
    c6: np.ndarray
    #: (Z,) sqrt(0.5 <r4>/<r2> sqrt(Z)), bohr^(1/2) units as in simple-dftd3
    r4r2: np.ndarray
    #: (Z,) D3 covalent radii (4/3 of Pyykkö-Atsumi), bohr
    rcov: np.ndarray
    #: lower-case method names with rational damping (the reference's spelling, no hyphens)
    functionals: tuple[str, ...]
    #: (F, 4) s6, s8, a1, a2 (a2 in bohr) of each name of ``functionals``
    damping: np.ndarray
    #: where the numbers come from (URL and sha256 of the source archive)
    source: str


def _full_c6(triangle: np.ndarray, max_z: int) -> np.ndarray:
    """(Z+1, Z+1, R, R) from the triangle of pairs ``ic = j + i (i - 1) / 2`` (1-based, i >= j),
    whose blocks are indexed [reference of Z_i, reference of Z_j]."""
    n_ref = triangle.shape[-1]
    full = np.zeros((max_z + 1, max_z + 1, n_ref, n_ref))
    i, j = np.tril_indices(max_z)  # 0-based, i >= j
    ic = j + i * (i + 1) // 2
    full[i + 1, j + 1] = triangle[ic]
    full[j + 1, i + 1] = triangle[ic].transpose(0, 2, 1)
    return full


@lru_cache(maxsize=1)
def d3_tables() -> D3Tables:
    """The tables of the installed package (read once)."""
    with resources.files(__package__).joinpath(TABLE_FILE).open("rb") as fh, np.load(fh, allow_pickle=False) as data:
        raw = {key: data[key] for key in data.files}
    max_z = int(raw["number_of_references"].shape[0])
    pad = lambda a, value=0.0: np.concatenate([np.full((1, *a.shape[1:]), value, a.dtype), a])
    return D3Tables(
        max_z=max_z,
        n_ref=pad(raw["number_of_references"], 1),
        ref_cn=pad(raw["reference_cn"]),
        c6=_full_c6(raw["c6_triangle"], max_z),
        r4r2=pad(raw["r4r2"]),
        rcov=pad(raw["covalent_radii"]),
        functionals=tuple(str(name) for name in raw["functionals"]),
        damping=raw["damping"],
        source=str(raw["source"]),
    )
