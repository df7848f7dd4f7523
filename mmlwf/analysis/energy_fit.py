"""Energies relative to element energies fitted to the set itself, for plots: total energies
of a set of several molecules spread over hundreds of eV by composition alone, which hides
errors of meV; minus a least-squares sum of element energies they become conformational
energies on a scale where errors show. The fit uses only the energies of the structures
shown, independent of the element references the training used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def fitted_element_energies(Z: np.ndarray, offsets: np.ndarray, E: np.ndarray) -> dict[int, float]:
    """Least-squares element energies ``{Z: eV}`` of the structures (``E ≈ sum over atoms``):
    the composition part of the energies, fitted to this set alone (minimum-norm solution
    when the compositions do not determine every element, e.g. one molecule)."""
    Z, offsets = np.asarray(Z), np.asarray(offsets)
    elements = np.unique(Z)
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    counts = np.zeros((len(offsets) - 1, elements.size))
    np.add.at(counts, (owner, np.searchsorted(elements, Z)), 1.0)
    coef, *_ = np.linalg.lstsq(counts, np.asarray(E, np.float64), rcond=None)
    return {int(z): float(c) for z, c in zip(elements, coef)}


def relative_energies(pred: Mapping) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """``(reference, predicted, element energies)``: both energies (eV) minus the sum of the
    element energies :func:`fitted_element_energies` fits to the reference energies of these
    structures, so that conformational energies and errors are visible whatever the
    composition; the same per-structure sum is subtracted from both, errors are unchanged."""
    offsets = pred.get("offsets")
    if offsets is None:
        offsets = np.concatenate([[0], np.cumsum(pred["n_atoms"])])
    ref = np.asarray(pred["E_ref"], np.float64)
    fit = fitted_element_energies(pred["Z"], offsets, ref)
    table = np.vectorize(fit.get)(np.asarray(pred["Z"]))
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    base = np.bincount(owner, weights=table, minlength=ref.size)
    return ref - base, np.asarray(pred["E_pred"], np.float64) - base, fit
