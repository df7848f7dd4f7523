"""Calibration of ensemble uncertainties: how well a predicted spread ranks and sizes the error.

Numpy and scipy only, float64 throughout, canonical units (eV, eV/Å, ...). A prediction is
the ensemble mean and its uncertainty the spread over the ``M`` members
(:func:`member_mean_spread`); calibration compares it with the error of the mean against the
reference, one *point* at a time:

- energies: one point per structure, ``error = E_mean - E_ref`` of shape ``(n,)``, ``spread``
  ``(n,)`` eV, the members' standard deviation (``ddof=0``);
- forces: one point per atom, ``error = F_mean - F_ref`` of shape ``(n, 3)`` and
  ``spread (n,)`` eV/Å, ``sqrt(mean over members |F_m - F_mean|^2)`` (issue 16's
  ``forces_uncertainty``); the error is compared through its length ``|error|``.

The arrays are the flat, unpadded per-structure and per-atom arrays of
:func:`mmlwf.analysis.predict.predict` (``F_pred (sum n_atoms, 3)``), so no mask is needed;
select rows before calling when padded arrays are at hand. Any vector quantity (dipole
``(n, 3)``) works like forces, any scalar one (ESP per grid point) like energies.

**The predictive distribution.** A point with error dimension ``d`` (1 or 3) and spread
``sigma`` is taken as an isotropic Gaussian, ``error ~ N(0, sigma_c^2 I_d)`` with
``sigma_c = sigma / sqrt(d)``, so that ``E|error|^2 = sigma^2``: for forces the spread is the
root of the trace of the members' covariance, and the isotropy is an assumption (the members
give only the trace). Then ``|error|^2 / sigma_c^2`` follows chi-squared with ``d`` degrees of
freedom, which gives:

- the calibration curve (Tran et al. 2020, uncertainty-toolbox's interval curve): for each
  expected proportion ``p`` the observed fraction of points with
  ``|error| <= sigma_c * sqrt(chi2.ppf(p, d))``; for ``d = 1`` that is
  ``|error| <= sigma * z_((1+p)/2)``, the central interval of probability ``p``. The
  miscalibration area is the area between that curve and the diagonal (0 when calibrated,
  at most 0.5);
- the negative log-likelihood, the mean over points of ``-log N_d(error; 0, sigma_c^2 I)``
  ``= d/2 log(2 pi) + d log(sigma_c) + |error|^2 / (2 sigma_c^2)`` (the ``d/2 log(2 pi)``
  constant included; its value depends on the unit of the error: per point in eV or eV/Å);
- the scale factor ``s`` minimising that NLL for spreads ``s * sigma``:
  ``s^2 = mean(|error|^2 / sigma^2)``, the same closed form for every ``d``. Fitted on the
  validation split and multiplied into every reported spread; on the data it was fitted on it
  equals the RMS of the normalised error ``|error| / sigma`` (1 when calibrated).

The Spearman rank correlation of ``|error|`` with ``sigma`` measures ranking alone (scaling
cannot change it).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

#: number of expected proportions of the calibration curve, evenly spaced in [0, 1]
#: (as uncertainty-toolbox's ``num_bins``)
N_PROPORTIONS = 100


class CalibrationCurve(NamedTuple):
    """Expected and observed proportions ``(k,)`` and the area between the two curves."""

    expected: np.ndarray
    observed: np.ndarray
    area: float


def member_mean_spread(values: np.ndarray, vector_ndim: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (n, *v), spread (n,))`` of member predictions ``values (M, n, *v)``.

    ``spread = sqrt(mean over members of |value_m - mean|^2)``, the squared length taken over
    the last ``vector_ndim`` axes (0 for energies, 1 for forces ``(M, A, 3)``); ``ddof=0``.
    """
    values = np.asarray(values, np.float64)
    if values.ndim < 2 + vector_ndim:
        raise ValueError(f"member values need shape (M, n{', v' * vector_ndim}), got {values.shape}")
    from ..ensemble import member_stats  # the one definition, shared with inference and MD

    return member_stats(values, vector_ndim)


def _points(error: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(|error| (n,), spread (n,), d)`` checked: matching lengths, finite errors, spreads
    finite and positive (the row of the first offender is named)."""
    error, spread = np.asarray(error, np.float64), np.asarray(spread, np.float64)
    if error.ndim not in (1, 2) or spread.ndim != 1 or error.shape[0] != spread.shape[0]:
        raise ValueError(f"error (n,) or (n, d) and spread (n,) expected, got {error.shape} and {spread.shape}")
    d = 1 if error.ndim == 1 else error.shape[1]
    norm = np.abs(error) if error.ndim == 1 else np.linalg.norm(error, axis=1)
    bad = np.flatnonzero(~np.isfinite(norm))
    if bad.size:
        raise ValueError(f"error of row {bad[0]} is not finite ({norm[bad[0]]})")
    bad = np.flatnonzero(~(np.isfinite(spread) & (spread > 0)))
    if bad.size:
        raise ValueError(f"spread of row {bad[0]} is {spread[bad[0]]}; spreads must be finite and > 0")
    return norm, spread, d


def _scale(scale: float) -> float:
    scale = float(scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"spread scale must be finite and > 0, got {scale}")
    return scale


def spearman(error: np.ndarray, spread: np.ndarray) -> float:
    """Spearman rank correlation of ``|error|`` with ``spread`` (ties get their mean rank);
    NaN for fewer than two points or a constant input."""
    from scipy.stats import spearmanr

    norm, spread, _ = _points(error, spread)
    if norm.size < 2 or np.ptp(norm) == 0 or np.ptp(spread) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(norm, spread).statistic)


def gaussian_nll(error: np.ndarray, spread: np.ndarray, scale: float = 1.0) -> float:
    """Mean negative log-likelihood per point of the errors under ``N_d(0, (scale *
    spread)^2 / d I)``, with the ``d/2 log(2 pi)`` constant (module docstring)."""
    norm, spread, d = _points(error, spread)
    if norm.size == 0:
        return float("nan")
    sigma_c = _scale(scale) * spread / np.sqrt(d)
    return float(np.mean(0.5 * d * np.log(2 * np.pi) + d * np.log(sigma_c) + 0.5 * (norm / sigma_c) ** 2))


def fit_scale(error: np.ndarray, spread: np.ndarray) -> float:
    """The factor ``s`` minimising :func:`gaussian_nll` of spreads ``s * spread``:
    ``sqrt(mean(|error|^2 / spread^2))`` (fit on the validation split)."""
    norm, spread, _ = _points(error, spread)
    if norm.size == 0:
        raise ValueError("no points to fit a scale factor on")
    return float(np.sqrt(np.mean((norm / spread) ** 2)))


def area_between(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Exact area between the piecewise-linear curves ``a(x)`` and ``b(x)`` (crossings within
    a segment included): the integral of ``|a - b|`` over ``x``."""
    x, diff = np.asarray(x, np.float64), np.asarray(a, np.float64) - np.asarray(b, np.float64)
    h, lo, hi = np.diff(x), diff[:-1], diff[1:]
    same = lo * hi >= 0
    denom = np.where(same, 1.0, np.abs(lo) + np.abs(hi))  # a crossing: two triangles
    seg = np.where(same, 0.5 * np.abs(lo + hi), 0.5 * (lo * lo + hi * hi) / denom)
    return float(np.sum(seg * h))


def calibration_curve(error: np.ndarray, spread: np.ndarray, scale: float = 1.0,
                      expected: np.ndarray | None = None) -> CalibrationCurve:
    """Observed against expected proportions of points within the central region of
    probability ``p`` of their Gaussian (module docstring), and the miscalibration area.

    ``expected`` defaults to :data:`N_PROPORTIONS` points evenly spaced in [0, 1]; the area
    is taken over its range, the curves linear between its points (as uncertainty-toolbox).
    """
    from scipy.stats import chi2

    norm, spread, d = _points(error, spread)
    p = np.linspace(0.0, 1.0, N_PROPORTIONS) if expected is None else np.asarray(expected, np.float64)
    if p.ndim != 1 or p.size < 2 or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 1:
        raise ValueError("expected proportions must increase within [0, 1] (at least two)")
    if norm.size == 0:
        raise ValueError("no points for a calibration curve")
    z2 = d * (norm / (_scale(scale) * spread)) ** 2  # |error|^2 / sigma_c^2, chi-squared(d)
    observed = np.mean(z2[:, None] <= chi2.ppf(p, d)[None, :], axis=0)
    return CalibrationCurve(p, observed, area_between(p, observed, p))


def calibration_metrics(error: np.ndarray, spread: np.ndarray, name: str, unit: str,
                        scale: float = 1.0) -> dict[str, float]:
    """The calibration metrics of one quantity for spreads ``scale * spread``, named
    ``{name}_...`` (``name``: ``energy``, ``forces``; ``unit``: ``eV``, ``eV_per_A``):
    ``spread_spearman``, ``miscalibration_area``, ``nll_{unit}`` (NLL of errors in ``unit``),
    ``rms_spread_{unit}`` (sharpness), ``rms_normalised_error`` (1 when calibrated) and the
    ``spread_scale`` applied."""
    norm, spread, _ = _points(error, spread)
    sigma = _scale(scale) * spread
    return {
        f"{name}_spread_spearman": spearman(norm, sigma),
        f"{name}_miscalibration_area": calibration_curve(error, sigma).area,
        f"{name}_nll_{unit}": gaussian_nll(error, sigma),
        f"{name}_rms_spread_{unit}": float(np.sqrt(np.mean(sigma**2))),
        f"{name}_rms_normalised_error": fit_scale(error, sigma),
        f"{name}_spread_scale": float(scale),
    }
