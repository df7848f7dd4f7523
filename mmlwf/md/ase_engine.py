"""The ASE engine of ``mmlwf md`` (the default): ASE's velocity Verlet (NVE) or Langevin (NVT,
centre of mass fixed) with the :class:`~mmlwf.calculator.MMLWFCalculator`, one model call per
step from Python. After every step (and on the start structure as step 0) the checks of
:mod:`mmlwf.md.stops` run; a stop ends the run and is recorded in ``md.json`` ``stopped`` (a
calculator that refuses a non-finite energy, as :class:`~mmlwf.calculator.MMLWFCalculator`
does, stops the run at that step as ``non_finite_energy``).
An ensemble's calculator puts the per-atom force uncertainty (eV/Å, scaled) into
``calc.results["forces_uncertainty"]``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import ConfigError, DataError
from . import stops
from .common import initial_velocities, min_distance
from .output import RunWriter
from .settings import MDSettings


class _Stop(Exception):
    """Raised by the observer to leave ASE's ``run`` loop at a stop."""


def _uncertainty(calc) -> np.ndarray | None:
    u = calc.results.get("forces_uncertainty")
    return None if u is None else np.asarray(u, np.float64)


def run_md(calc, atoms, settings: MDSettings, outdir: str | os.PathLike, *, overwrite: bool = False,
           info: dict | None = None) -> dict:
    """Run ``settings.steps`` steps of ``atoms`` with ``calc``; write ``outdir`` (:mod:`mmlwf.md.output`);
    return ``md.json``'s content. A run that meets a stop condition ends there, complete, with
    ``stopped`` set (None otherwise)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    settings.check()
    atoms = atoms.copy()
    atoms.calc = calc
    n = len(atoms)
    if hasattr(calc, "check_atoms"):  # MMLWFCalculator: pbc, elements as one-line DataErrors
        calc.check_atoms(atoms)
    if settings.ensemble == "nvt":  # the Langevin noise would otherwise move the centre of mass
        from ase.constraints import FixCom

        atoms.set_constraint(FixCom())
    initial_velocities(atoms, settings)
    t0 = time.perf_counter()
    atoms.get_forces()  # compiles the model for this size
    first_s = time.perf_counter() - t0
    has_u = _uncertainty(calc) is not None
    if settings.uses_uncertainty and not has_u:
        raise ConfigError("md: uncertainty trust levels need an ensemble model (its calculator gives no "
                          "forces_uncertainty)")
    writer = RunWriter(outdir, settings, uncertainty=has_u, overwrite=overwrite)
    try:
        dt = settings.dt_fs * units.fs
        if settings.ensemble == "nve":
            dyn = VelocityVerlet(atoms, timestep=dt)
        else:
            dyn = Langevin(atoms, timestep=dt, temperature_K=settings.temperature_K, fixcm=False,
                           friction=settings.friction_per_fs / units.fs, rng=np.random.default_rng(settings.seed + 1))
        bonds = stops.bond_list(atoms.numbers, atoms.positions) if settings.bond_factor is not None else \
            (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        lim = stops.limits(settings)
        state: dict = {"stopped": None}

        def observe():
            step = dyn.nsteps
            d, i, j = min_distance(atoms.positions)
            writer.distance(step, d, i, j)
            epot = atoms.get_potential_energy()
            u_atoms = _uncertainty(calc)
            u = float(np.max(u_atoms)) if u_atoms is not None else None
            code, value, a, b = stops.check(epot, (d, i, j), stops.stretched_bond(atoms.positions, bonds),
                                            u_atoms, lim)
            last = step if code else settings.steps
            if writer.wants_row(step, last):
                writer.row(step, epot, atoms.get_kinetic_energy(), atoms.get_temperature(), d, u)
            if writer.wants_frame(step, last):
                writer.frame(atoms, step, u)
            if code:
                state["stopped"] = stops.stop_record(code, step, settings.dt_fs, value, a, b)
                raise _Stop

        dyn.attach(observe, interval=1)
        t1 = time.perf_counter()
        try:
            dyn.run(settings.steps)
        except _Stop:
            pass
        except DataError as exc:  # the calculator's energy at the next step's positions is not finite
            if exc.field != "energy":
                raise
            state["stopped"] = stops.stop_record(stops.NON_FINITE, dyn.nsteps + 1, settings.dt_fs, np.nan, -1, -1)
        wall = time.perf_counter() - t1
        steps_done = int(dyn.nsteps) if state["stopped"] is None else state["stopped"]["step"]
        return writer.finish(n_atoms=n, formula=atoms.get_chemical_formula(), steps_done=steps_done, wall_s=wall,
                             first_s=first_s, stopped=state["stopped"],
                             extra={"engine": "ase",
                                    "padded_shapes": sorted(list(s) for s in getattr(calc, "shapes_compiled", ())),
                                    **(info or {})})
    except BaseException:
        writer.discard()
        raise
