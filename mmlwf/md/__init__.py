"""Molecular dynamics with a trained model: ``mmlwf md``.

Two engines write the same output (:mod:`mmlwf.md.output`: ``trajectory.traj``,
``energy.csv``, ``md.json``): :func:`run_md`, ASE's integrators with the calculator, one step
per Python call (the default, :mod:`mmlwf.md.ase_engine`), and :func:`run_md_jax`, JAX-MD
integrators with many steps per compiled call and several trajectories batched
(:mod:`mmlwf.md.jax_engine`, the optional ``md`` extra). NVE (velocity Verlet) or NVT
(Langevin, centre of mass fixed) from Maxwell-Boltzmann velocities (seeded; centre-of-mass
motion and rotation removed, as for an isolated molecule; scaled to exactly ``temperature_K``
as ASE counts it: 3N degrees of freedom, 3N-3 with the fixed centre of mass).

Both engines stop a trajectory (:mod:`mmlwf.md.stops`) when atoms come too close, a bond of the
start structure breaks, the energy stops being finite or an ensemble's largest per-atom force
uncertainty exceeds the upper trust level; the run up to that step is written to ``OUTDIR`` as
a complete run whose ``md.json`` says why (``stopped``: reason, step, time_fs, value, atoms).
"""

from .settings import ENGINES, ENSEMBLES, MDAborted, MDSettings

#: names imported from the engines when first used (``mmlwf md --help`` stays free of numpy,
#: ase and jax: tests/test_steps.py)
_LAZY = {"run_md": "ase_engine", "run_md_jax": "jax_engine", **{name: "common" for name in (
    "energy_drift", "initial_velocities", "load_calculator", "load_trained", "min_distance", "read_structure")}}

__all__ = ["ENGINES", "ENSEMBLES", "MDAborted", "MDSettings", "energy_drift", "initial_velocities",
           "load_calculator", "load_trained", "min_distance", "read_structure", "run_md", "run_md_jax"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
