"""The point dipoles are taken about: stored dipoles are about the centroid of the atoms.

The dipole of a molecule with total charge ``Q`` depends on the point ``p`` it is taken about:
``D_p = sum_i q_i (R_i - p)``, so ``D_c = D_p - Q (c - p)``. Models give the dipole about the
centroid (unweighted mean of the positions, :func:`mmlwf.models.common.centroid`), so a
packed dataset stores ``D`` about the centroid (manifest ``dipole_reference``), converted at
conversion time from the point of the source (:data:`DIPOLE_REFERENCES`): ``origin`` (the
coordinate origin, as pyscf's ``dip_moment`` and tblite's ``dipole`` give it), ``centroid``
or ``center_of_mass``. Neutral molecules are unchanged by the conversion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported on use: the CLI's parsers import this module's names
    import numpy as np

DIPOLE_REFERENCES = ("origin", "centroid", "center_of_mass")
#: the point a source's dipoles are about unless its settings say otherwise
DEFAULT_DIPOLE_REFERENCE = "origin"
#: the point stored dipoles are about (what the models predict)
STORED_DIPOLE_REFERENCE = "centroid"


def _per_molecule_sum(x: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """``(k, ...)`` sums of the rows of ``x (A, ...)`` of each molecule (``n_atoms (k,)``, all >= 1)."""
    import numpy as np

    starts = np.zeros(n_atoms.shape[0], np.int64)
    np.cumsum(n_atoms[:-1], out=starts[1:])
    return np.add.reduceat(x, starts, axis=0)


def reference_points(point: str, Z: np.ndarray, R: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """``(k, 3)`` the point ``point`` of each molecule: ``Z (A,)``, ``R (A, 3)`` Å, ``n_atoms (k,)``."""
    import numpy as np

    n_atoms = np.asarray(n_atoms, np.int64)
    R = np.asarray(R, np.float64)
    if point == "origin":
        return np.zeros((n_atoms.shape[0], 3))
    if point == "centroid":
        return _per_molecule_sum(R, n_atoms) / n_atoms[:, None]
    if point == "center_of_mass":
        from ase.data import atomic_masses

        m = atomic_masses[np.asarray(Z, np.int64)]
        return _per_molecule_sum(R * m[:, None], n_atoms) / _per_molecule_sum(m, n_atoms)[:, None]
    raise ValueError(f"dipole reference {point!r} is not one of {DIPOLE_REFERENCES}")


def dipoles_about_centroid(D: np.ndarray, Qtot: np.ndarray, Z: np.ndarray, R: np.ndarray, n_atoms: np.ndarray,
                           point: str) -> np.ndarray:
    """``(k, 3)`` dipoles about each molecule's centroid from dipoles ``D (k, 3)`` e·Å about
    ``point``: ``D - Qtot (centroid - p)`` (``Qtot (k,)`` e, ``R`` Å). ``D`` itself when
    ``point`` is the centroid."""
    import numpy as np

    if point == STORED_DIPOLE_REFERENCE:
        return D
    shift = reference_points(STORED_DIPOLE_REFERENCE, Z, R, n_atoms) - reference_points(point, Z, R, n_atoms)
    return np.asarray(D, np.float64) - np.asarray(Qtot, np.float64)[:, None] * shift
