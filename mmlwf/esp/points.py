"""Selection of the points where an electrostatic potential is kept (or computed).

Shared by the cube reader (:mod:`mmlwf.io.cube`) and the labeller (:mod:`mmlwf.label`).
Two rules, both keeping **only points outside every atom's van der Waals sphere scaled by
``inner``** (points inside the molecule are dominated by nuclear cusps that point-charge
models cannot fit):

- ``shell``: points between ``inner`` and ``outer`` times the vdW radii (Merz-Kollman:
  1.4 and 2.0), i.e. outside every scaled-``inner`` sphere and inside at least one
  scaled-``outer`` sphere;
- ``density``: points whose electron density lies in ``density_window`` (e/Bohr^3, the
  usual 1e-4..1e-3 e/Bohr^3 window), also outside the scaled-``inner`` spheres. For water
  that window lies at 1.0-1.5 vdW radii, so ``inner`` defaults to 1.0 in this mode (1.4 in
  ``shell`` mode).

Radii: Bondi's, as :data:`ase.data.vdw_radii` tabulates them (Å); elements without a Bondi
radius are refused. Lengths here are Å throughout. ``max_points`` subsamples, without
replacement and deterministically from ``seed`` (and the structure's index), the points a
structure keeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from ase.data import chemical_symbols, vdw_radii

from ..errors import ConfigError, DataError

MODES = ("shell", "density")


@dataclass(frozen=True)
class PointSettings:
    """How ESP points are chosen (lengths in Å, density in e/Bohr^3).

    ``mode``: ``"shell"`` or ``"density"``; ``inner``/``outer``: multiples of the vdW radii
    (``outer`` only for ``shell``; ``inner`` defaults to 1.4 for ``shell``, 1.0 for
    ``density``); ``density_window``: (low, high) density, for ``density``;
    ``spacing``: step of the cubic grid of candidate points where points are generated (the
    labeller; cubes bring their own grid); ``max_points``: keep at most this many points per
    structure (None: all); ``seed``: for that subsampling.
    """

    mode: str = "shell"
    inner: float | None = None  # None: 1.4 (shell) or 1.0 (density)
    outer: float = 2.0
    density_window: tuple[float, float] = (1.0e-4, 1.0e-3)
    spacing: float = 0.5
    max_points: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"point selection mode '{self.mode}' unknown (known: {', '.join(MODES)})")
        if self.inner is None:
            object.__setattr__(self, "inner", 1.4 if self.mode == "shell" else 1.0)
        if not 0.0 < self.inner or (self.mode == "shell" and not self.inner < self.outer):
            raise ConfigError(f"vdW multiples need 0 < inner < outer, got inner={self.inner} outer={self.outer}")
        lo, hi = (float(x) for x in self.density_window)
        if not 0.0 <= lo < hi:
            raise ConfigError(f"density window needs 0 <= low < high, got {self.density_window}")
        object.__setattr__(self, "density_window", (lo, hi))
        if not self.spacing > 0.0:
            raise ConfigError(f"grid spacing must be > 0 Å, got {self.spacing}")
        if self.max_points is not None and int(self.max_points) < 1:
            raise ConfigError(f"max_points must be >= 1 or None, got {self.max_points}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["density_window"] = list(self.density_window)
        return d


def radii(Z: np.ndarray) -> np.ndarray:
    """Bondi van der Waals radii (Å) of atomic numbers ``Z``; DataError (field Z) for elements
    without one (callers add the file and structure index)."""
    Z = np.asarray(Z, dtype=np.int64)
    if Z.size and (Z.min() < 1 or Z.max() >= len(vdw_radii)):
        bad = int(Z[(Z < 1) | (Z >= len(vdw_radii))][0])
        raise DataError(f"no van der Waals radius for atomic number {bad}", field="Z")
    r = np.asarray(vdw_radii, dtype=np.float64)[Z]
    if not np.all(np.isfinite(r)):
        z = int(Z[~np.isfinite(r)][0])
        raise DataError(f"no van der Waals radius for {chemical_symbols[z]} (Z={z}) in the Bondi table", field="Z")
    return r


def _scaled_distance(points: np.ndarray, Z: np.ndarray, R: np.ndarray, pairs: int = 1 << 21) -> np.ndarray:
    """min over atoms of |p - R_a| / r_a for every point (in units of the vdW radius), in
    chunks of at most ``pairs`` point-atom pairs (bounded memory for large molecules)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3)
    r = radii(Z)
    chunk = max(1, pairs // max(R.shape[0], 1))
    out = np.empty(points.shape[0])
    for a in range(0, points.shape[0], chunk):
        p = points[a : a + chunk]
        d = np.linalg.norm(p[:, None, :] - R[None, :, :], axis=-1)
        out[a : a + chunk] = (d / r[None, :]).min(axis=1)
    return out


def outside_mask(points: np.ndarray, Z: np.ndarray, R: np.ndarray, scale: float) -> np.ndarray:
    """True for points outside every atom's vdW sphere scaled by ``scale`` (distance >= scale * r)."""
    return _scaled_distance(points, Z, R) >= scale


def select(
    points: np.ndarray,
    Z: np.ndarray,
    R: np.ndarray,
    settings: PointSettings,
    density: np.ndarray | None = None,
    index: int = 0,
) -> np.ndarray:
    """Indices (ascending) of the ``points`` (Å) kept under ``settings``.

    ``density`` (e/Bohr^3, one value per point) is required in ``density`` mode. ``index``
    (the structure's) varies the subsampling between structures of one dataset.
    """
    s = _scaled_distance(points, Z, R)
    keep = s >= settings.inner
    if settings.mode == "shell":
        keep &= s <= settings.outer
    else:
        if density is None:
            raise ConfigError("density point selection needs electron densities (a density cube)")
        rho = np.asarray(density, dtype=np.float64).reshape(-1)
        lo, hi = settings.density_window
        keep &= (rho >= lo) & (rho <= hi)
    idx = np.flatnonzero(keep)
    return subsample(idx, settings.max_points, settings.seed, index)


def subsample(idx: np.ndarray, max_points: int | None, seed: int, index: int = 0) -> np.ndarray:
    """At most ``max_points`` of ``idx``, chosen without replacement from ``(seed, index)``, in order."""
    if max_points is None or idx.shape[0] <= max_points:
        return idx
    rng = np.random.default_rng([int(seed), int(index)])
    return np.sort(rng.choice(idx, size=int(max_points), replace=False))


def candidate_grid(Z: np.ndarray, R: np.ndarray, settings: PointSettings) -> np.ndarray:
    """A cubic grid (step ``settings.spacing`` Å) covering every atom's ``outer``-scaled sphere
    (in ``density`` mode, 2.5 times the radius), as ``(G, 3)`` points in Å."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3)
    reach = (settings.outer if settings.mode == "shell" else 2.5) * radii(Z).max()
    lo = R.min(axis=0) - reach
    hi = R.max(axis=0) + reach
    axes = [np.arange(lo[k], hi[k] + 0.5 * settings.spacing, settings.spacing) for k in range(3)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def generate(Z: np.ndarray, R: np.ndarray, settings: PointSettings, index: int = 0, density_fn=None) -> np.ndarray:
    """Points (Å) for a molecule: the candidate grid filtered by :func:`select`.

    ``density_fn(points_angstrom) -> e/Bohr^3`` is needed in ``density`` mode; it is called
    only on the candidates outside the ``inner``-scaled spheres.
    """
    pts = candidate_grid(Z, R, settings)
    if settings.mode == "shell":
        return pts[select(pts, Z, R, settings, index=index)]
    pts = pts[outside_mask(pts, Z, R, settings.inner)]
    if density_fn is None:
        raise ConfigError("density point selection needs a density function")
    return pts[select(pts, Z, R, settings, density=density_fn(pts), index=index)]
