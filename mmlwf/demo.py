"""Demo data that needs no download: small molecules sampled by MD with a cheap "teacher".

:func:`generate_demo_data` builds molecules with :func:`ase.build.molecule`, samples
conformers by a short Langevin MD driven by the teacher calculator, labels each conformer
with the teacher's energy (eV), forces (eV/Å) and, where the teacher has them, atomic charges
(e) and dipole (e·Å), and writes them to one extxyz file. The output is byte-identical for the
same settings and is written atomically (temporary file, then rename).

Teachers (:data:`TEACHERS`): ``gfn2-xtb`` (GFN2-xTB through tblite: a real semi-empirical
quantum-chemistry method with charges and dipoles, a few ms per small molecule; the default)
and ``emt`` (ASE's EMT for H, C, N, O: physically crude for molecules, instant; for tests).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError
from .fileio import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MOLECULES = ("H2O", "CH4", "NH3", "CH3OH")
TEACHERS = ("gfn2-xtb", "emt")
#: results kept from the teacher, by its result name (units: ASE's eV, eV/Å, e, e·Å)
KEPT_RESULTS = ("energy", "forces", "charges", "dipole")


def make_teacher(name: str):
    """The reference calculator called ``name`` (one of :data:`TEACHERS`)."""
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name == "gfn2-xtb":
        try:
            from tblite.ase import TBLite
        except ImportError:  # pragma: no cover - tblite is a dependency
            raise ConfigError("demo teacher 'gfn2-xtb' needs the tblite package (pip install tblite)")
        return TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
    raise ConfigError(f"demo teacher '{name}' is unknown (known: {', '.join(TEACHERS)})")


def sample_molecule(
    name: str,
    n: int,
    *,
    rng: np.random.Generator,
    teacher: str = "gfn2-xtb",
    temperature_K: float = 300.0,
    steps_between: int = 20,
    timestep_fs: float = 0.5,
    friction: float = 0.02,
) -> list:
    """``n`` labelled conformers of molecule ``name`` from Langevin MD at ``temperature_K``.

    The MD starts from the ASE geometry with Maxwell-Boltzmann momenta, runs
    ``steps_between`` steps before the first sample (burn-in) and between samples.
    Returns ``ase.Atoms`` carrying a SinglePointCalculator with the teacher's energy (eV),
    forces (eV/Å) and, when it gives them, charges (e) and dipole (e·Å).
    """
    from ase import Atoms, units
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin

    try:
        atoms = molecule(name)
    except KeyError:
        raise ConfigError(f"demo molecule '{name}' is not one ase.build.molecule knows (e.g. H2O, CH4)")
    atoms.calc = make_teacher(teacher)
    # Maxwell-Boltzmann momenta, drawn here so that only ``rng`` decides them
    kT = units.kB * float(temperature_K)
    masses = atoms.get_masses()
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * kT)[:, None])
    dyn = Langevin(
        atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction, fixcm=False, rng=rng
    )
    frames = []
    for _ in range(n):
        try:
            dyn.run(steps_between)
            atoms.get_forces()
        except NotImplementedError as exc:  # EMT: element without parameters
            raise ConfigError(f"demo teacher '{teacher}' cannot handle molecule '{name}' ({exc})")
        results = {k: np.array(v) for k, v in atoms.calc.results.items() if k in KEPT_RESULTS}
        results["energy"] = float(results["energy"])
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        frame.info["molecule"] = name
        frame.calc = SinglePointCalculator(frame, **results)
        frames.append(frame)
    return frames


def generate_demo_data(
    out_path: str | os.PathLike,
    molecules: Sequence[str] = DEFAULT_MOLECULES,
    n_per_molecule: int = 8,
    seed: int = 0,
    temperature_K: float = 300.0,
    teacher: str = "gfn2-xtb",
    steps_between: int = 20,
) -> Path:
    """Write ``n_per_molecule`` labelled conformers of each molecule to ``out_path`` (extxyz).

    Each molecule has its own random stream (from ``seed`` and its position in the list), so
    the file depends only on the arguments. Energies in eV, forces in eV/Å, charges in e,
    dipoles in e·Å.
    """
    import ase.io

    if not molecules:
        raise ConfigError("demo: 'molecules' is empty")
    if int(n_per_molecule) < 1:
        raise ConfigError(f"demo: 'n_per_molecule' must be at least 1, got {n_per_molecule}")
    if int(steps_between) < 1:
        raise ConfigError(f"demo: 'steps_between' must be at least 1, got {steps_between}")
    if not float(temperature_K) > 0:
        raise ConfigError(f"demo: 'temperature_K' must be positive, got {temperature_K}")
    from threadpoolctl import threadpool_limits

    make_teacher(teacher)  # fail on an unknown teacher before any work
    frames = []
    # One OpenMP/BLAS thread: threaded reductions in the teacher differ in the last bits from
    # run to run, and MD amplifies that into different trajectories (one thread is also faster
    # for molecules this small).
    with threadpool_limits(limits=1):
        for k, name in enumerate(molecules):
            rng = np.random.default_rng([int(seed), k])
            frames += sample_molecule(
                name,
                int(n_per_molecule),
                rng=rng,
                teacher=teacher,
                temperature_K=float(temperature_K),
                steps_between=int(steps_between),
            )
    out = Path(out_path)
    with atomic_write(out) as fh:
        ase.io.write(fh, frames, format="extxyz")
    names = ", ".join(molecules)
    log.info("wrote %s: %d structures (%s; teacher %s, seed %d)", out, len(frames), names, teacher, seed)
    return out
