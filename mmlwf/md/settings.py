"""Settings of an MD run (:class:`MDSettings`) shared by both engines, and the engines' names.

Units are in the field names: Å, eV, fs, K; the force uncertainty in eV/Å (the per-atom spread
of an ensemble's forces times its fitted scale, :func:`mmlwf.ensemble.spread_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

from ..errors import ConfigError

ENSEMBLES = ("nve", "nvt")
#: ``ase``: ASE integrators and the calculator, one step per Python call (the default);
#: ``jax-md``: JAX-MD integrators, many steps per compiled call (the ``md`` extra)
ENGINES = ("ase", "jax-md")


class MDAborted(RuntimeError):
    """Kept for callers of earlier versions: a run that meets a stop condition is no longer an
    exception but a recorded outcome (``md.json`` ``stopped``, :mod:`mmlwf.md.stops`)."""


@dataclass(frozen=True)
class MDSettings:
    """Settings of one run (units in the names).

    Stop conditions (checked after every step, and on the start structure as step 0):
    ``min_distance_A`` (two atoms closer; 0 turns it off), ``bond_factor`` (a bond of the start
    structure, :func:`mmlwf.md.stops.bond_list`, longer than ``bond_factor`` times its start
    length; None: off), ``uncertainty_upper_eV_per_A`` (the largest per-atom force uncertainty of
    an ensemble above it; None: off). Steps whose largest force uncertainty lies in
    ``(uncertainty_lower_eV_per_A, uncertainty_upper_eV_per_A]`` are candidates (``md.json``).
    """

    steps: int
    dt_fs: float = 0.5
    ensemble: str = "nve"
    temperature_K: float = 300.0
    friction_per_fs: float = 0.01  # Langevin (nvt) only
    seed: int = 0
    log_every: int = 1
    traj_every: int = 10
    min_distance_A: float = 0.5  # stop below this
    bond_factor: float | None = None  # stop when a start bond stretches beyond this factor
    uncertainty_upper_eV_per_A: float | None = None  # stop above this (ensembles)
    uncertainty_lower_eV_per_A: float | None = None  # candidates above this (ensembles)

    def check(self) -> MDSettings:
        """``self``, or a one-line :class:`~mmlwf.errors.ConfigError` naming the bad setting."""
        def need(ok, what):
            if not ok:
                raise ConfigError(f"md: {what}")

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(math.isfinite(self.dt_fs) and self.dt_fs > 0, f"dt_fs must be > 0, got {self.dt_fs}")
        need(self.ensemble in ENSEMBLES, f"ensemble must be one of {', '.join(ENSEMBLES)}, got {self.ensemble!r}")
        need(math.isfinite(self.temperature_K) and self.temperature_K >= 0,
             f"temperature_K must be >= 0, got {self.temperature_K}")
        need(math.isfinite(self.friction_per_fs) and self.friction_per_fs > 0,
             f"friction must be > 0 (1/fs), got {self.friction_per_fs}")
        need(self.log_every >= 1 and self.traj_every >= 1, "log_every and traj_every must be >= 1")
        need(self.min_distance_A >= 0, f"min_distance_A must be >= 0, got {self.min_distance_A}")
        need(self.bond_factor is None or (math.isfinite(self.bond_factor) and self.bond_factor > 1),
             f"bond_factor must be > 1, got {self.bond_factor}")
        for name in ("uncertainty_upper_eV_per_A", "uncertainty_lower_eV_per_A"):
            value = getattr(self, name)
            need(value is None or (math.isfinite(value) and value > 0), f"{name} must be > 0, got {value}")
        lo, hi = self.uncertainty_lower_eV_per_A, self.uncertainty_upper_eV_per_A
        need(lo is None or hi is None or lo < hi,
             f"uncertainty_lower_eV_per_A ({lo}) must be below uncertainty_upper_eV_per_A ({hi})")
        return self

    @property
    def uses_uncertainty(self) -> bool:
        """Whether a trust level is set (the model must then be an ensemble)."""
        return self.uncertainty_upper_eV_per_A is not None or self.uncertainty_lower_eV_per_A is not None


def degrees_of_freedom(n_atoms: int, ensemble: str) -> int:
    """Degrees of freedom the temperature is counted over, as ASE counts them: ``3N``, and
    ``3N - 3`` for the Langevin runs, whose centre of mass is fixed."""
    return max(3 * n_atoms - (3 if ensemble == "nvt" else 0), 1)
