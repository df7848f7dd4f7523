"""Calibration metrics of ensemble spreads (mmlwf.analysis.calibration): values by hand and
against scipy, synthetic Gaussian samples that are calibrated or whose spread is 3x too
small, scalar (energy) and 3-vector (force) errors."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from mmlwf.analysis.calibration import (
    area_between,
    calibration_curve,
    calibration_metrics,
    fit_scale,
    gaussian_nll,
    member_mean_spread,
    spearman,
)

N = 20_000


def sample(d: int, too_small: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Errors drawn from N_d(0, sigma^2/d I) with log-normal spreads sigma; the spreads
    returned are ``sigma / too_small``."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.normal(-2.0, 0.7, N))
    shape = (N,) if d == 1 else (N, d)
    z = rng.standard_normal(shape)
    sigma_c = sigma / math.sqrt(d)
    error = z * (sigma_c if d == 1 else sigma_c[:, None])
    return error, sigma / too_small


# ----------------------------------------------------------------------------- by hand

ERR = np.array([1.0, -2.0, 0.5])
SPREAD = np.array([1.0, 1.0, 0.5])  # |error| / spread = 1, 2, 1


def test_values_by_hand():
    assert fit_scale(ERR, SPREAD) == pytest.approx(math.sqrt((1 + 4 + 1) / 3), rel=1e-14)
    nll = 0.5 * math.log(2 * math.pi) + (0 + 0 + math.log(0.5)) / 3 + (0.5 + 2.0 + 0.5) / 3
    assert gaussian_nll(ERR, SPREAD) == pytest.approx(nll, rel=1e-14)
    # z_0.75 = 0.674 and z_0.95 = 1.645: none of 1, 2, 1 below the first, two below the second
    curve = calibration_curve(ERR, SPREAD, expected=np.array([0.0, 0.5, 0.9, 1.0]))
    np.testing.assert_array_equal(curve.observed, [0.0, 0.0, 2 / 3, 1.0])
    gap = np.array([0.0, 0.5, 0.9 - 2 / 3, 0.0])  # expected - observed
    area = 0.5 * 0.5 * (gap[0] + gap[1]) + 0.4 * 0.5 * (gap[1] + gap[2]) + 0.1 * 0.5 * (gap[2] + gap[3])
    assert curve.area == pytest.approx(area, rel=1e-14)


def test_area_between_crossing_and_dense_integral():
    assert area_between([0.0, 1.0], [0.2, -0.2], [0.0, 0.0]) == pytest.approx(0.1, rel=1e-14)
    assert area_between([0.0, 2.0], [0.0, 1.0], [1.0, 0.0]) == pytest.approx(1.0, rel=1e-14)
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 1, 12))
    a, b = rng.normal(size=12), rng.normal(size=12)
    fine = np.linspace(x[0], x[-1], 400_001)
    dense = integrate.trapezoid(np.abs(np.interp(fine, x, a) - np.interp(fine, x, b)), fine)
    assert area_between(x, a, b) == pytest.approx(dense, rel=1e-6)


def test_spearman():
    rng = np.random.default_rng(2)
    spread = rng.uniform(0.1, 1.0, 50)
    assert spearman(-np.exp(3 * spread), spread) == pytest.approx(1.0, abs=1e-14)  # |error| monotone in spread
    assert spearman(1.0 / spread, spread) == pytest.approx(-1.0, abs=1e-14)
    # ties: |error| ranks 1, 2.5, 2.5, 4 against 1, 3, 2, 4 -> 4.5 / sqrt(4.5 * 5)
    err, sp = np.array([1.0, -2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert spearman(err, sp) == pytest.approx(4.5 / math.sqrt(22.5), rel=1e-14)
    vec = rng.normal(size=(50, 3))
    assert spearman(vec, spread) == pytest.approx(stats.spearmanr(np.linalg.norm(vec, axis=1), spread).statistic,
                                                  rel=1e-14)
    assert math.isnan(spearman(np.ones(5), spread[:5]))


def test_nll_matches_scipy_logpdf():
    rng = np.random.default_rng(3)
    err, sp = rng.normal(size=40), rng.uniform(0.2, 2.0, 40)
    assert gaussian_nll(err, sp) == pytest.approx(-np.mean(stats.norm.logpdf(err, 0.0, sp)), rel=1e-13)
    assert gaussian_nll(err, sp, scale=1.7) == pytest.approx(-np.mean(stats.norm.logpdf(err, 0.0, 1.7 * sp)), rel=1e-13)
    vec = rng.normal(size=(40, 3))  # per atom: isotropic, component sigma = spread / sqrt(3)
    per_atom = [stats.multivariate_normal.logpdf(v, np.zeros(3), (s * s / 3) * np.eye(3)) for v, s in zip(vec, sp)]
    assert gaussian_nll(vec, sp) == pytest.approx(-np.mean(per_atom), rel=1e-13)


@pytest.mark.parametrize("d", [1, 3])
def test_fit_scale_minimises_nll(d):
    err, sp = sample(d, too_small=2.0, seed=4)
    err, sp = err[:200], sp[:200]
    best = optimize.minimize_scalar(lambda s: gaussian_nll(err, sp, scale=s), bounds=(0.1, 10), method="bounded",
                                    options={"xatol": 1e-10})
    assert fit_scale(err, sp) == pytest.approx(best.x, rel=1e-6)


def test_one_dimensional_curve_is_the_central_interval():
    """d = 1: observed proportion = fraction with z_(1/2 - p/2) <= error/spread <= z_(1/2 + p/2)."""
    rng = np.random.default_rng(5)
    err, sp = rng.normal(size=500) * 1.3, rng.uniform(0.5, 1.5, 500)
    curve = calibration_curve(err, sp)
    z = (err / sp)[:, None]
    p = np.linspace(0, 1, 100)
    inside = (z >= stats.norm.ppf(0.5 - p / 2)) & (z <= stats.norm.ppf(0.5 + p / 2))
    np.testing.assert_array_equal(curve.expected, p)
    np.testing.assert_array_equal(curve.observed, inside.mean(axis=0))


# ----------------------------------------------------------------------------- synthetic samples


@pytest.mark.parametrize("d", [1, 3])
def test_calibrated_sample(d):
    err, sp = sample(d)
    assert fit_scale(err, sp) == pytest.approx(1.0, abs=0.02)
    assert calibration_curve(err, sp).area < 0.01
    assert spearman(err, sp) > 0.3  # larger spreads, larger errors


@pytest.mark.parametrize("d", [1, 3])
def test_spread_three_times_too_small(d):
    err, sp = sample(d, too_small=3.0)
    assert fit_scale(err, sp) == pytest.approx(3.0, rel=0.02)
    # the area the population has: observed(p) = F_d(F_d^-1(p) / 9), F_d the chi-squared cdf
    exact = integrate.quad(lambda p: p - stats.chi2.cdf(stats.chi2.ppf(p, d) / 9, d), 0, 1, limit=200)[0]
    assert exact > 0.25
    area = calibration_curve(err, sp).area
    assert area == pytest.approx(exact, abs=0.01)
    scale = fit_scale(err[: N // 2], sp[: N // 2])  # "validation" half, applied to the other
    after = calibration_curve(err[N // 2:], sp[N // 2:], scale=scale).area
    assert after < 0.015
    assert gaussian_nll(err[N // 2:], sp[N // 2:], scale=scale) < gaussian_nll(err[N // 2:], sp[N // 2:]) - 1.0


def test_calibration_metrics_names_and_scale():
    err, sp = sample(3, too_small=3.0)
    before = calibration_metrics(err, sp, "forces", "eV_per_A")
    after = calibration_metrics(err, sp, "forces", "eV_per_A", scale=fit_scale(err, sp))
    assert set(before) == {"forces_spread_spearman", "forces_miscalibration_area", "forces_nll_eV_per_A",
                           "forces_rms_spread_eV_per_A", "forces_rms_normalised_error", "forces_spread_scale"}
    assert before["forces_rms_normalised_error"] == pytest.approx(3.0, rel=0.02)
    assert after["forces_rms_normalised_error"] == pytest.approx(1.0, rel=1e-12)
    assert after["forces_spread_spearman"] == before["forces_spread_spearman"]  # ranking unchanged by scaling
    assert after["forces_rms_spread_eV_per_A"] == pytest.approx(before["forces_rms_spread_eV_per_A"]
                                                                * after["forces_spread_scale"], rel=1e-12)
    assert after["forces_miscalibration_area"] < 0.01 < before["forces_miscalibration_area"]


# ----------------------------------------------------------------------------- ensembles and bad input


def test_member_mean_spread():
    F = np.array([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[-1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])  # (M=2, A=2, 3)
    mean, spread = member_mean_spread(F, vector_ndim=1)
    np.testing.assert_allclose(mean, [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]], rtol=0, atol=0)
    np.testing.assert_allclose(spread, [1.0, math.sqrt(2.0)], rtol=1e-15)  # |(0, 1, -1)| for both members
    rng = np.random.default_rng(6)
    E = rng.normal(size=(4, 7))
    mean, spread = member_mean_spread(E)
    np.testing.assert_allclose(spread, np.std(E, axis=0), rtol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        member_mean_spread(np.ones((4, 3)), vector_ndim=1)


def test_bad_input_names_the_row():
    with pytest.raises(ValueError, match="row 1 is 0.0"):
        fit_scale(ERR, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="row 2 is not finite"):
        gaussian_nll(np.array([1.0, 2.0, np.nan]), SPREAD)
    with pytest.raises(ValueError, match="spread"):
        spearman(ERR, SPREAD[:2])
    with pytest.raises(ValueError, match="scale"):
        calibration_curve(ERR, SPREAD, scale=0.0)
    with pytest.raises(ValueError, match="increase"):
        calibration_curve(ERR, SPREAD, expected=np.array([0.5, 0.2]))
