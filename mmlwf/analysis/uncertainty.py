"""The uncertainties of an ensemble's predictions in an evaluation: which spreads a prediction
dict holds, and the calibration metrics of each (:mod:`.calibration`), raw and with the
model's fitted spread scale (``model.json`` ``ensemble.scale``, :func:`mmlwf.ensemble.spread_scale`).

A prediction dict of an ensemble (:func:`mmlwf.analysis.predict.predict`) has, beside each
member-mean prediction, its raw spread over the members: ``E_spread (k,)`` eV, ``F_spread
(A,)`` eV/Å per atom, ``D_spread (k,)`` e·Å and, for DCMNet, ``esp_spread (G,)`` V. A single
model's has none, and nothing here changes its evaluation.

Points with a zero spread (all members agree exactly) have no Gaussian; they are left out of
the calibration metrics and counted (``n_zero_spread``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np


class Quantity(NamedTuple):
    """A predicted quantity with a spread: its prediction, reference and spread keys, its
    name in metric names, its unit there, and its key in ``ensemble.scale``."""

    pred: str
    ref: str
    spread: str
    name: str
    unit: str
    label: str  # readable, with the unit


#: the quantities whose spreads are calibrated, in report order
QUANTITIES = (
    Quantity("E_pred", "E_ref", "E_spread", "energy", "eV", "energy (eV)"),
    Quantity("F_pred", "F_ref", "F_spread", "forces", "eV_per_A", "forces (eV/Å, per atom)"),
    Quantity("D_pred", "D_ref", "D_spread", "dipole", "eA", "dipole (e·Å)"),
    Quantity("esp_pred", "esp_ref", "esp_spread", "esp", "V", "ESP (V, per grid point)"),
)
#: the spread keys of a prediction dict (per structure, per atom or per grid point)
SPREAD_KEYS = tuple(q.spread for q in QUANTITIES) + ("q_spread",)


def has_spreads(pred: Mapping) -> bool:
    """Whether ``pred`` is an ensemble's prediction dict (it holds a spread)."""
    return any(k in pred for k in SPREAD_KEYS)


def quantities(pred: Mapping) -> list[Quantity]:
    """The quantities of ``pred`` with prediction, reference and spread."""
    return [q for q in QUANTITIES if all(k in pred for k in (q.pred, q.ref, q.spread))]


def points(pred: Mapping, q: Quantity) -> tuple[np.ndarray, np.ndarray, int]:
    """``(error, spread, n_zero)`` of quantity ``q``: the error of the mean ``(n,)`` or
    ``(n, 3)`` and the raw spread ``(n,)`` of the points with a positive spread, and how many
    points had a zero spread."""
    error = np.asarray(pred[q.pred], np.float64) - np.asarray(pred[q.ref], np.float64)
    spread = np.asarray(pred[q.spread], np.float64)
    keep = spread > 0
    return error[keep], spread[keep], int(keep.size - keep.sum())


def uncertainty_metrics(pred: Mapping, info: Mapping | None) -> dict | None:
    """The calibration section of a metrics document, None for a single model's predictions.

    ``{"members": M, "spread_scale": {quantity: s}, "n_zero_spread": {quantity: n},
    "raw": {metrics}, "scaled": {metrics}}``: the metrics of
    :func:`~mmlwf.analysis.calibration.calibration_metrics` for each quantity with a spread
    (``energy_spread_spearman``, ``energy_miscalibration_area``, ``energy_nll_eV``,
    ``forces_nll_eV_per_A``, ...), for the raw spreads and for the spreads times the model's
    scale (``info``: ``model.json``; scale 1 where none was fitted)."""
    from ..ensemble import ensemble_size, spread_scale
    from .calibration import calibration_metrics

    found = quantities(pred)
    if not has_spreads(pred) or not found:
        return None
    doc: dict = {"members": ensemble_size(info), "spread_scale": {}, "n_zero_spread": {}, "raw": {}, "scaled": {}}
    for q in found:
        error, spread, n_zero = points(pred, q)
        scale = spread_scale(info, q.name)
        doc["spread_scale"][q.name] = scale
        doc["n_zero_spread"][q.name] = n_zero
        if spread.size == 0:
            continue
        doc["raw"] |= calibration_metrics(error, spread, q.name, q.unit)
        doc["scaled"] |= calibration_metrics(error, spread, q.name, q.unit, scale=scale)
    return doc


def calibration_table(section: Mapping) -> tuple[list[str], list[list]]:
    """``(header, rows)`` of a calibration section for the report: one row per metric (the
    Spearman correlation of |error| with spread, the miscalibration area, the Gaussian NLL,
    the RMS spread, the RMS normalised error, the scale applied), two columns per quantity
    (raw and scaled spreads), in the units of the metric names (eV, eV/Å, e·Å, V)."""
    metrics = (("spread_spearman", "Spearman ρ(|error|, spread)"),
               ("miscalibration_area", "miscalibration area"), ("nll_{unit}", "Gaussian NLL per point"),
               ("rms_spread_{unit}", "RMS spread"), ("rms_normalised_error", "RMS |error| / spread (1: calibrated)"),
               ("spread_scale", "spread scale"))
    raw, scaled = section.get("raw") or {}, section.get("scaled") or {}
    found = [q for q in QUANTITIES if f"{q.name}_spread_scale" in raw]
    header = ["metric"] + [f"{q.label}, {which}" for q in found for which in ("raw", "scaled")]
    rows = [[text] + [col.get(f"{q.name}_{key.format(unit=q.unit)}") for q in found for col in (raw, scaled)]
            for key, text in metrics]
    return header, rows
