"""Demo data that needs no download: small molecules sampled by MD with a cheap "teacher".

:func:`generate_demo_data` builds molecules with :func:`ase.build.molecule`, samples
conformers by a short Langevin MD driven by the teacher calculator, labels each conformer
with the teacher's energy (eV), forces (eV/Å) and, where the teacher has them, atomic charges
(e) and dipole (e·Å), and writes them to one extxyz file. The output is byte-identical for the
same settings and is written atomically (temporary file, then rename).

Teachers (:data:`TEACHERS`): ``gfn2-xtb`` (GFN2-xTB through tblite: a real semi-empirical
quantum-chemistry method with charges and dipoles, a few ms per small molecule; the default)
and ``emt`` (ASE's EMT for H, C, N, O: physically crude for molecules, instant; for tests).
What each teacher's labels are (dispersion included, the point dipoles are about) is in
:data:`TEACHER_FACTS`; the demo dataset's settings state them.

:func:`write_isolated_atoms` gives the teacher's isolated-atom energy of every element of the
molecules, each atom in its ground spin state (:data:`GROUND_STATE_MULTIPLICITY`), as an extxyz
of single atoms: the demo dataset's element reference energies (``stats.element_energies``).
GFN2-xTB as such is spin-restricted: an open-shell atom then gets the energy of its
spin-averaged shells (triplet O 0.05 eV *above* singlet O, which is wrong by eV); tblite's
spin polarisation (spGFN2-xTB, Neugebauer et al., J. Comput. Chem. 44, 2120 (2023)) gives
the atoms their exchange energy (triplet O 1.5 eV below singlet). It changes nothing for
closed-shell molecules (zero spin density), so the molecules' labels and the atoms'
energies are one method.
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
#: what each teacher's labels are: whether its energies include dispersion (GFN2-xTB has D4;
#: EMT none) and the point its dipoles are about (tblite: the coordinate origin; EMT: no dipoles)
TEACHER_FACTS = {"gfn2-xtb": {"dispersion": True, "dipole_reference": "origin"},
                 "emt": {"dispersion": False, "dipole_reference": None}}
#: ground-state spin multiplicity 2S+1 of the free atoms H to Ar (Hund's rules)
GROUND_STATE_MULTIPLICITY = {1: 2, 2: 1, 3: 2, 4: 1, 5: 2, 6: 3, 7: 4, 8: 3, 9: 2, 10: 1,
                             11: 2, 12: 1, 13: 2, 14: 3, 15: 4, 16: 3, 17: 2, 18: 1}


def make_teacher(name: str, multiplicity: int | None = None):
    """The reference calculator called ``name`` (one of :data:`TEACHERS`); ``multiplicity``
    (2S+1) for an open-shell system such as an isolated atom (GFN2-xTB then with spin
    polarisation, see the module docstring; None: the closed-shell molecule)."""
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name == "gfn2-xtb":
        try:
            from tblite.ase import TBLite
        except ImportError:  # pragma: no cover - tblite is a dependency
            raise ConfigError("demo teacher 'gfn2-xtb' needs the tblite package (pip install tblite)")
        if multiplicity is None:
            return TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
        return TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0, multiplicity=int(multiplicity),
                      spin_polarization=1.0)
    raise ConfigError(f"demo teacher '{name}' is unknown (known: {', '.join(TEACHERS)})")


def isolated_atom_energy(Z: int, teacher: str = "gfn2-xtb", multiplicity: int | None = None) -> float:
    """The teacher's energy (eV) of a free atom of element ``Z`` in the spin state
    ``multiplicity`` (default: its ground state, :data:`GROUND_STATE_MULTIPLICITY`)."""
    from ase import Atoms
    from ase.data import chemical_symbols

    if multiplicity is None:
        if Z not in GROUND_STATE_MULTIPLICITY:
            raise ConfigError(f"demo: no ground-state spin multiplicity known for {chemical_symbols[Z]} (known: "
                              f"{', '.join(chemical_symbols[z] for z in GROUND_STATE_MULTIPLICITY)})")
        multiplicity = GROUND_STATE_MULTIPLICITY[Z]
    atom = Atoms(numbers=[Z], positions=[[0.0, 0.0, 0.0]])
    atom.calc = make_teacher(teacher, multiplicity)
    return float(atom.get_potential_energy())


def molecule_elements(molecules: Sequence[str]) -> list[int]:
    """The atomic numbers of the elements of ``molecules`` (names ase.build.molecule knows), ascending."""
    from ase.build import molecule

    elements: set[int] = set()
    for name in molecules:
        try:
            elements.update(int(z) for z in molecule(name).numbers)
        except KeyError:
            raise ConfigError(f"demo molecule '{name}' is not one ase.build.molecule knows (e.g. H2O, CH4)")
    return sorted(elements)


def write_isolated_atoms(out_path: str | os.PathLike, molecules: Sequence[str] = DEFAULT_MOLECULES,
                         teacher: str = "gfn2-xtb") -> Path:
    """Write the teacher's isolated-atom energy (eV) of every element of ``molecules`` to
    ``out_path``: an extxyz of single atoms at the origin (``config_type=isolated_atom``, the
    ``multiplicity`` used), one per element, the format ``mmlwf stats --element-energies`` reads."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for z in molecule_elements(molecules):
        atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        atom.info.update(config_type="isolated_atom", multiplicity=GROUND_STATE_MULTIPLICITY.get(z, 0),
                         teacher=teacher)
        atom.calc = SinglePointCalculator(atom, energy=isolated_atom_energy(z, teacher))
        frames.append(atom)
    out = Path(out_path)
    with atomic_write(out) as fh:
        ase.io.write(fh, frames, format="extxyz")
    log.info("wrote %s: isolated atoms %s (teacher %s)", out,
             ", ".join(f"{a.get_chemical_symbols()[0]} {a.get_potential_energy():.4f} eV" for a in frames), teacher)
    return out


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
    isolated_atoms: str | os.PathLike | None = None,
) -> Path:
    """Write ``n_per_molecule`` labelled conformers of each molecule to ``out_path`` (extxyz).

    Each molecule has its own random stream (from ``seed`` and its position in the list), so
    the file depends only on the arguments. Energies in eV, forces in eV/Å, charges in e,
    dipoles in e·Å (about the origin, as the teacher gives them). ``isolated_atoms``: where
    to write the teacher's isolated atoms of the molecules' elements (:func:`write_isolated_atoms`).
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
    if isolated_atoms is not None:
        with threadpool_limits(limits=1):
            write_isolated_atoms(isolated_atoms, molecules, teacher)
    return out
