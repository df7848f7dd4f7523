"""What both MD engines share on the host: reading the model and the start structure, the
initial velocities, distances and the energy drift."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .settings import MDSettings


def load_calculator(source: str | os.PathLike, which: str = "best", **kwargs):
    """An :class:`~mmlwf.calculator.MMLWFCalculator` from a run directory or an exported file."""
    from ..calculator import MMLWFCalculator

    source = Path(source)
    if source.is_dir():
        return MMLWFCalculator.from_run(source, which, **kwargs)
    if source.is_file():
        return MMLWFCalculator.from_file(source, **kwargs)
    raise FileNotFoundError(f"{source}: neither a run directory nor an exported model file")


def read_structure(path: str | os.PathLike, index: int = 0):
    """Frame ``index`` of any file ``ase.io`` reads, as ``ase.Atoms`` (its own calculator dropped)."""
    import ase.io

    from ..io.ase_formats import check_before_ase

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


def initial_velocities(atoms, settings: MDSettings) -> None:
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


def load_trained(source: str | os.PathLike, which: str = "best"):
    """The :class:`~mmlwf.inference.TrainedModel` of a run directory or an exported file."""
    source = Path(source)
    if source.is_dir():
        from ..rundir import RunDir

        run = RunDir(source)
        if not run.is_run():
            raise FileNotFoundError(f"{source}: not a run directory (no model.json)")
        return run.load(which)
    if source.is_file():
        from ..export import load_exported

        return load_exported(source)
    raise FileNotFoundError(f"{source}: neither a run directory nor an exported model file")
