"""``D3Calculator``: D3(BJ) two-body dispersion of a molecule as an ASE calculator.

Grimme et al., JCP 132, 154104 (2010); JCC 32, 1456 (2011); computed by
:func:`mmlwf.physics.d3.d3_atomic_energies` in float64, agreeing with the ``dftd3`` package's
``RationalDampingParam(method=functional, atm=False)``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from ..errors import DataError
from .d3 import d3_atomic_energies, damping_parameters
from .d3_tables import d3_tables


@partial(jax.jit, static_argnames="cutoff")
def _energy_and_forces(Z, R, dst, src, params, cutoff):
    """(A,) atomic energies (eV) and (A, 3) forces (eV/Å), compiled once per molecule size."""
    def energies(R):
        vec = R[dst] - R[src]
        r = jnp.sqrt(jnp.sum(vec * vec, axis=-1))
        return d3_atomic_energies(Z, r, dst, src, jnp.ones_like(r), Z.shape[0], cutoff=cutoff, **params)

    def total(R):
        e = energies(R)
        return jnp.sum(e), e

    (_, e), grad = jax.value_and_grad(total, has_aux=True)(R)
    return e, -grad


class D3Calculator(Calculator):
    """D3(BJ) dispersion (no three-body term) with ``functional``'s damping parameters.

    ``cutoff``: two-body cutoff in Å (None: simple-dftd3's 60 bohr). Isolated molecules only
    (``pbc`` must be off). Results: ``energy`` (= ``free_energy``), ``energies``, ``forces``.
    """

    implemented_properties = ("energy", "free_energy", "energies", "forces")

    def __init__(self, functional: str = "pbe0", cutoff: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.functional = functional
        self.params = damping_parameters(functional)  # ConfigError for an unknown name
        self.cutoff = cutoff

    def check_atoms(self, atoms) -> np.ndarray:
        """The atomic numbers of ``atoms``, or a one-line DataError (pbc, element without D3)."""
        if np.any(atoms.pbc):
            raise DataError(f"periodic boundary conditions (pbc={atoms.pbc.tolist()}) are not supported "
                            "by D3Calculator: isolated molecules only (set atoms.pbc = False)", field="pbc")
        Z = np.asarray(atoms.numbers, np.int64)
        max_z = d3_tables().max_z
        bad = Z[(Z < 1) | (Z > max_z)]
        if bad.size:
            z = int(bad[0])
            name = chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"
            raise DataError(f"element {name} (Z={z}) has no D3 reference data (Z 1-{max_z})", field="Z")
        return Z

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        Z = self.check_atoms(self.atoms)
        R = np.asarray(self.atoms.positions, np.float64)
        if not np.all(np.isfinite(R)):
            raise DataError("non-finite positions", field="R")
        n = Z.shape[0]
        dst, src = np.nonzero(~np.eye(n, dtype=bool))  # every ordered pair of the molecule
        with jax.enable_x64(True):  # float64 always: agreement with the reference
            e, f = _energy_and_forces(Z, R, dst, src, self.params, cutoff=self.cutoff)
            e, f = np.asarray(e, np.float64), np.asarray(f, np.float64)
        energy = float(e.sum())
        self.results = {"energy": energy, "free_energy": energy, "energies": e, "forces": f}
