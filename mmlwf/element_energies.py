"""Per-element reference energies: the table by atomic number that models' energies are relative to.

A model predicts the energy relative to the sum of its molecule's element energies; these are
added back in float64 (training targets, predictions, the calculator). ``model.json`` stores
them as ``element_energies_by_Z`` (eV, keys are atomic numbers as strings).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .constants import MAX_Z, Z_RANGE, Z_TABLE_SIZE
from .errors import DataError


def reference_table(element_energies: Mapping | None) -> np.ndarray:
    """``(Z_TABLE_SIZE,)`` float64 energies (eV) by atomic number (``{"8": -432.1, ...}`` or
    ``{8: ...}``); elements without a reference are NaN. An atomic number outside 1-118 is a
    one-line :class:`~mmlwf.errors.DataError`."""
    table = np.full(Z_TABLE_SIZE, np.nan, np.float64)
    for z, e in dict(element_energies or {}).items():
        zi = int(z)
        if not 1 <= zi <= MAX_Z:
            raise DataError(f"element energies: atomic number {z} is outside {Z_RANGE}", field="element_energies")
        table[zi] = float(e)
    return table
