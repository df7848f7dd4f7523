"""ASE calculator for a trained energy model (PhysNet or another registered kind that predicts
energy): energy (eV), forces (eV/Å), charges (e), dipole (e·Å).

    calc = MMLWFCalculator.from_run("results/runs/demo")      # orbax checkpoint (best, EMA)
    calc = MMLWFCalculator.from_file("model.mmlwf")           # exported file, no orbax needed
    atoms.calc = calc; atoms.get_potential_energy(); atoms.get_forces()

Isolated molecules only (``pbc`` must be all False). For every new geometry the neighbour
list is rebuilt within the model's pair cutoff (and, for a model with long-range terms, the
long-range list within its ``long_pair_cutoff``: every pair of the molecule by default); atoms
(with one padding atom) and each pair list are padded up to the next power of two, so a
molecular-dynamics run compiles the single jitted energy-and-forces function once per
bucket, not per step. The network runs in float32 by
default; the per-element reference energies are added in float64. ``dtype="float64"`` runs
the network in float64 (needs ``jax_enable_x64``), e.g. for finite-difference checks.

Properties: ``energy``/``free_energy`` (eV, absolute: model + element references),
``energies`` (per atom, eV: the element's reference energy plus the atom's contribution; with
isolated-atom references, ``model.json`` ``metadata.element_energies_source``, the contribution
``energies - E_atom(Z)`` is the atom's share of the atomisation energy), ``forces`` (eV/Å, -dE/dR), and for models with charges
``charges`` (e, summing to ``charge``) and ``dipole`` (e·Å, about the centroid of the atoms,
which for a neutral molecule is the same about any origin).

An ensemble (:mod:`mmlwf.ensemble`) is evaluated in one compiled program: every property is
the member mean, and ``energy_uncertainty`` (eV) and ``forces_uncertainty`` (eV/Å, per atom:
``sqrt(mean over members |F_m - F_mean|^2)``) are added, each the raw spread times the
model's fitted scale (``model.json`` ``ensemble.scale``, :attr:`MMLWFCalculator.spread_scale`).
A single model has neither key.
"""

from __future__ import annotations

import os

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from .batch import GraphBatch, device_fields
from .errors import ConfigError, DataError

#: smallest padded sizes (atoms, directed pairs); larger systems go to the next power of two
MIN_ATOMS, MIN_PAIRS = 8, 64


def _energy_kinds() -> str:
    from .models.registry import kinds

    return ", ".join(k.name for k in kinds().values() if k.predicts_energy)


def bucket(n: int, minimum: int) -> int:
    """The padded size for ``n``: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


class MMLWFCalculator(Calculator):
    """ASE calculator wrapping a :class:`~mmlwf.inference.TrainedModel` of an energy model.

    ``charge``: total charge of the molecule in e (used by models that predict charges).
    ``dtype``: ``"float32"`` (default) or ``"float64"`` for the network evaluation.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "charges", "dipole"]
    #: the properties an ensemble adds (eV and eV/Å per atom, scaled)
    uncertainty_properties = ("energy_uncertainty", "forces_uncertainty")

    def __init__(self, trained, *, charge: float = 0.0, dtype: str = "float32", **kwargs) -> None:
        import jax

        from .inference import jitted_forward
        from .models.registry import kind_of_model

        super().__init__(**kwargs)
        kind = kind_of_model(trained.model)
        if kind is None or not kind.predicts_energy:
            raise ConfigError(f"{trained.run_dir}: the calculator needs an energy model ({_energy_kinds()}), "
                              f"got {type(trained.model).__name__}")
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"calculator dtype must be float32 or float64, got {dtype!r}")
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("calculator dtype float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1)")
        self.trained = trained
        self.model = trained.model
        self.reference = np.asarray(trained.reference, np.float64)
        self.cutoff = kind.pair_cutoff(self.model)
        self.long_cutoff = kind.long_pair_cutoff(self.model)  # None: no long-range list
        self.charge = float(charge)
        self.dtype = np.dtype(dtype)
        self.params = jax.tree.map(lambda a: jax.numpy.asarray(a, self.dtype), trained.params)
        self.members = trained.members
        self._evaluate = jitted_forward(self.model, ensemble=trained.ensemble_kind)
        #: factors multiplying the raw spreads, ``{"energy": s_E, "forces": s_F}`` (ensembles)
        self.spread_scale = {q: trained.spread_scale(q) for q in ("energy", "forces")}
        self.shapes_compiled: set[tuple[int, ...]] = set()  # (atoms, pairs[, long pairs]) buckets seen
        props = ["energy", "free_energy", "energies", "forces"]
        if getattr(self.model, "charges", False):
            props += ["charges", "dipole"]
        if self.members > 1:
            props += list(self.uncertainty_properties)
        self.implemented_properties = props

    # -- construction
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, which: str = "best", **kwargs) -> MMLWFCalculator:
        """From a run directory's ``best`` or ``latest`` checkpoint (EMA weights when kept)."""
        from .rundir import RunDir

        run = RunDir(run_dir)
        if not run.is_run():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no model.json)")
        if not run.kind.predicts_energy:
            raise ConfigError(f"{run_dir}: model type {run.model_type!r} predicts no energy; "
                              f"the calculator needs an energy model ({_energy_kinds()})")
        return cls(run.load(which), **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> MMLWFCalculator:
        """From a file written by ``mmlwf export`` (needs neither orbax nor optax)."""
        from .export import load_exported

        return cls(load_exported(path), **kwargs)

    # -- evaluation
    def check_atoms(self, atoms) -> np.ndarray:
        """The atomic numbers of ``atoms``, or a one-line DataError (pbc, unknown element)."""
        if np.any(atoms.pbc):
            raise DataError(f"periodic boundary conditions (pbc={atoms.pbc.tolist()}) are not supported: "
                            "isolated molecules only (set atoms.pbc = False)", field="pbc")
        Z = np.asarray(atoms.numbers, np.int64)
        if Z.size == 0:
            raise DataError("no atoms", field="Z")
        known = np.zeros(119, bool)
        known[: getattr(self.model, "max_atomic_number", 118) + 1] = True
        known &= ~np.isnan(self.reference)
        bad = Z[(Z < 1) | (Z > 118) | ~known[np.clip(Z, 0, 118)]]
        if bad.size:
            z = int(bad[0])
            name = chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"
            have = ", ".join(chemical_symbols[k] for k in np.flatnonzero(known))
            raise DataError(f"element {name} (Z={z}) is not supported by this model (it knows {have})", field="Z")
        return Z

    def batch(self, atoms) -> GraphBatch:
        """The padded batch of ``atoms`` (:mod:`mmlwf.batch`: the molecule is graph 0, graph 1
        and at least the last atom are padding), atoms and each pair list padded to
        power-of-two buckets."""
        from .batch import from_molecules
        from .batching.neighbours import neighbour_pairs

        Z = self.check_atoms(atoms)
        R = np.asarray(atoms.positions, np.float64)
        if not np.all(np.isfinite(R)):
            raise DataError("non-finite positions", field="R")
        n = Z.shape[0]
        offsets = np.array([0, n])
        dst, src = neighbour_pairs(R, offsets, self.cutoff)
        n_a, n_p = bucket(n + 1, MIN_ATOMS), bucket(dst.shape[0], MIN_PAIRS)  # + 1: the padding atom
        shape: tuple[int, ...] = (n_a, n_p)
        long = {}
        if self.long_cutoff is not None:
            pairs = neighbour_pairs(R, offsets, self.long_cutoff)
            long = {"long_pairs": pairs, "long_cutoff": self.long_cutoff,
                    "n_long_pairs": bucket(pairs[0].shape[0], MIN_PAIRS)}
            shape += (long["n_long_pairs"],)
        b = from_molecules([{"Z": Z, "R": R, "Qtot": self.charge}], n_graphs=2, n_atoms=n_a, n_pairs=n_p,
                           pairs=(dst, src), cutoff=self.cutoff, dtype=self.dtype, **long)
        self.shapes_compiled.add(shape)
        return b

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        import jax

        super().calculate(atoms, properties, system_changes)
        b = self.batch(self.atoms)
        n = len(self.atoms)
        out = jax.device_get(self._evaluate(self.params, device_fields(b)))
        ref = self.reference[b.Z[:n]]
        energy = float(np.float64(out["energy"][0]) + ref.sum())
        if not np.isfinite(energy):
            raise DataError(f"the model's energy is not finite ({energy})", field="energy")
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": np.asarray(out["atomic_energies"][:n], np.float64) + ref,
            "forces": np.asarray(out["forces"][:n], np.float64),
        }
        if "charges" in out:
            self.results["charges"] = np.asarray(out["charges"][:n], np.float64)
            self.results["dipole"] = np.asarray(out["dipole"][0], np.float64)
        if self.members > 1:
            self.results["energy_uncertainty"] = float(out["energy_spread"][0]) * self.spread_scale["energy"]
            self.results["forces_uncertainty"] = (np.asarray(out["forces_spread"][:n], np.float64)
                                                  * self.spread_scale["forces"])
