"""Molecular dynamics with a trained model through ASE: ``mmlwf md``.

NVE (velocity Verlet) or NVT (Langevin, centre of mass fixed) from one structure, with
Maxwell-Boltzmann initial velocities (seeded; centre-of-mass motion and rotation removed, as
for an isolated molecule; scaled to exactly ``temperature_K`` as ASE counts it, 3N degrees
of freedom, 3N-3 with the fixed centre of mass). Writes into ``OUTDIR``:

- ``trajectory.traj`` (ASE trajectory, every ``traj_every`` steps, with energy and forces),
- ``energy.csv``: ``step, time_fs, Epot_eV, Ekin_eV, Etot_eV, T_K, min_distance_A`` every
  ``log_every`` steps,
- ``md.json``: settings, timing (steps per second after the first, compiling, evaluation),
  the closest approach of any two atoms and, for NVE, the total-energy drift.

The run is written into a temporary folder beside ``OUTDIR`` and renamed when complete. If
two atoms come closer than ``min_distance_A`` (or the energy stops being finite) the run
stops with :class:`MDAborted`; what it wrote up to then is kept in ``OUTDIR.aborted``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .fileio import make_temp_dir

ENSEMBLES = ("nve", "nvt")


class MDAborted(RuntimeError):
    """The simulation became unphysical (atoms too close, non-finite energy)."""


@dataclass(frozen=True)
class MDSettings:
    """Settings of one run (units in the names)."""

    steps: int
    dt_fs: float = 0.5
    ensemble: str = "nve"
    temperature_K: float = 300.0
    friction_per_fs: float = 0.01  # Langevin (nvt) only
    seed: int = 0
    log_every: int = 1
    traj_every: int = 10
    min_distance_A: float = 0.5  # abort below this

    def check(self) -> MDSettings:
        def need(ok, what):
            if not ok:
                raise ConfigError(f"md: {what}")

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(np.isfinite(self.dt_fs) and self.dt_fs > 0, f"dt_fs must be > 0, got {self.dt_fs}")
        need(self.ensemble in ENSEMBLES, f"ensemble must be one of {', '.join(ENSEMBLES)}, got {self.ensemble!r}")
        need(np.isfinite(self.temperature_K) and self.temperature_K >= 0,
             f"temperature_K must be >= 0, got {self.temperature_K}")
        need(np.isfinite(self.friction_per_fs) and self.friction_per_fs > 0,
             f"friction must be > 0 (1/fs), got {self.friction_per_fs}")
        need(self.log_every >= 1 and self.traj_every >= 1, "log_every and traj_every must be >= 1")
        need(self.min_distance_A >= 0, f"min_distance_A must be >= 0, got {self.min_distance_A}")
        return self


def load_calculator(source: str | os.PathLike, which: str = "best", **kwargs):
    """An :class:`~mmlwf.calculator.MMLWFCalculator` from a run directory or an exported file."""
    from .calculator import MMLWFCalculator

    source = Path(source)
    if source.is_dir():
        return MMLWFCalculator.from_run(source, which, **kwargs)
    if source.is_file():
        return MMLWFCalculator.from_file(source, **kwargs)
    raise FileNotFoundError(f"{source}: neither a run directory nor an exported model file")


def read_structure(path: str | os.PathLike, index: int = 0):
    """Frame ``index`` of any file ``ase.io`` reads, as ``ase.Atoms`` (its own calculator dropped)."""
    import ase.io

    from .io.ase_formats import check_before_ase

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    check_before_ase(path, None, lambda message, **where: DataError(message, path=path, **where))
    try:
        atoms = ase.io.read(path, index=index)
    except IndexError:
        raise DataError(f"has no frame {index}", path=path, index=index) from None
    except Exception as exc:  # ase.io raises many kinds for unreadable files
        raise DataError(f"cannot read a structure ({type(exc).__name__}: {exc})", path=path) from None
    atoms.calc = None
    return atoms


def min_distance(positions: np.ndarray) -> tuple[float, int, int]:
    """Smallest interatomic distance (Å) and the pair of atoms, ``(inf, -1, -1)`` for one atom."""
    n = positions.shape[0]
    if n < 2:
        return float("inf"), -1, -1
    diff = positions[:, None, :] - positions[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    np.fill_diagonal(d2, np.inf)
    i, j = divmod(int(np.argmin(d2)), n)
    return float(np.sqrt(d2[i, j])), min(i, j), max(i, j)


def energy_drift(time_fs: np.ndarray, etot_eV: np.ndarray, n_atoms: int) -> dict:
    """Total-energy drift: slope of a linear fit of ``Etot / n_atoms`` in meV/atom/ps, and the
    largest ``|Etot - Etot(0)|`` in meV (whole system) and meV/atom."""
    t_ps = np.asarray(time_fs, np.float64) / 1000.0
    e = np.asarray(etot_eV, np.float64)
    slope = float(np.polyfit(t_ps, e / n_atoms, 1)[0]) * 1000.0 if t_ps.size >= 2 else float("nan")
    dev = float(np.max(np.abs(e - e[0]))) * 1000.0
    return {"drift_meV_per_atom_per_ps": slope, "max_abs_dEtot_meV": dev, "max_abs_dEtot_meV_per_atom": dev / n_atoms}


def _initial_velocities(atoms, settings: MDSettings) -> None:
    """Maxwell-Boltzmann velocities (seeded) without centre-of-mass motion and rotation,
    scaled so that the instantaneous temperature is exactly ``temperature_K``."""
    from ase.md import velocitydistribution as vd

    rng = np.random.default_rng(settings.seed)
    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, settings.temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, rng=rng)
    vd.Stationary(atoms)
    if len(atoms) > 2:
        vd.ZeroRotation(atoms)
    T = atoms.get_temperature()
    if T > 0:
        atoms.set_velocities(atoms.get_velocities() * np.sqrt(settings.temperature_K / T))


def run_md(calc, atoms, settings: MDSettings, outdir: str | os.PathLike, *, overwrite: bool = False,
           info: dict | None = None) -> dict:
    """Run ``settings.steps`` steps of ``atoms`` with ``calc``; write ``outdir``; return ``md.json``'s content.

    Raises :class:`MDAborted` (one-line message) when the run becomes unphysical.
    """
    from ase import units
    from ase.io.trajectory import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    settings.check()
    outdir = Path(outdir)
    if outdir.exists() and not overwrite:
        raise FileExistsError(f"{outdir} exists (use --overwrite to replace it)")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{outdir.name}.", outdir.parent, suffix=".tmp")
    atoms = atoms.copy()
    atoms.calc = calc
    n = len(atoms)
    try:
        calc.check_atoms(atoms)
        if settings.ensemble == "nvt":  # the Langevin noise would otherwise move the centre of mass
            from ase.constraints import FixCom

            atoms.set_constraint(FixCom())
        _initial_velocities(atoms, settings)
        t0 = time.perf_counter()
        atoms.get_forces()  # compiles the model for this size
        first_s = time.perf_counter() - t0
        dt = settings.dt_fs * units.fs
        if settings.ensemble == "nve":
            dyn = VelocityVerlet(atoms, timestep=dt)
        else:
            dyn = Langevin(atoms, timestep=dt, temperature_K=settings.temperature_K, fixcm=False,
                           friction=settings.friction_per_fs / units.fs, rng=np.random.default_rng(settings.seed + 1))
        rows: list[tuple] = []
        closest = {"min_distance_A": float("inf"), "step": -1, "pair": [-1, -1]}
        log_fh = open(tmp / "energy.csv", "w", newline="")
        writer = csv.writer(log_fh)
        writer.writerow(["step", "time_fs", "Epot_eV", "Ekin_eV", "Etot_eV", "T_K", "min_distance_A"])
        traj = Trajectory(tmp / "trajectory.traj", "w", atoms)

        def observe():
            step = dyn.nsteps
            d, i, j = min_distance(atoms.positions)
            if d < closest["min_distance_A"]:
                closest.update(min_distance_A=d, step=step, pair=[i, j])
            if step % settings.log_every == 0 or step == settings.steps:
                epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
                row = (step, step * settings.dt_fs, epot, ekin, epot + ekin, atoms.get_temperature(), d)
                writer.writerow([row[0], f"{row[1]:.6g}"] + [f"{v:.10f}" for v in row[2:5]] + [f"{row[5]:.4f}", f"{d:.6f}"])
                rows.append(row)
                if not np.isfinite(epot + ekin):
                    raise MDAborted(f"non-finite energy at step {step}")
            if step % settings.traj_every == 0 or step == settings.steps:
                traj.write(atoms)
            if d < settings.min_distance_A:
                raise MDAborted(f"atoms {i} and {j} came {d:.3f} Å apart (< {settings.min_distance_A} Å) at step "
                                f"{step} (t = {step * settings.dt_fs:g} fs)")

        dyn.attach(observe, interval=1)
        t1 = time.perf_counter()
        try:
            dyn.run(settings.steps)
        finally:
            wall = time.perf_counter() - t1
            traj.close()
            log_fh.close()
        data = np.asarray(rows, np.float64)
        summary = {
            "settings": asdict(settings),
            "n_atoms": n,
            "formula": atoms.get_chemical_formula(),
            "steps_done": int(dyn.nsteps),
            "simulated_ps": dyn.nsteps * settings.dt_fs / 1000.0,
            "first_evaluation_s": first_s,
            "md_wall_s": wall,
            "steps_per_s": dyn.nsteps / wall if wall > 0 else float("nan"),
            "closest_approach": closest,
            "mean_T_K": float(np.mean(data[1:, 5])) if len(data) > 1 else float(data[0, 5]),
            "padded_shapes": sorted(list(s) for s in calc.shapes_compiled),
            **({"nve": energy_drift(data[:, 1], data[:, 4], n)} if settings.ensemble == "nve" else {}),
            **(info or {}),
        }
        (tmp / "md.json").write_text(json.dumps(summary, indent=2) + "\n")
    except MDAborted:
        aborted = outdir.with_name(outdir.name + ".aborted")
        shutil.rmtree(aborted, ignore_errors=True)
        os.replace(tmp, aborted)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if outdir.exists():
        shutil.rmtree(outdir)
    os.replace(tmp, outdir)
    return summary
