"""When a trajectory stops: the checks both engines make after every step.

Pure functions of arrays with ``xp`` (numpy for the ASE engine, jax.numpy inside the JAX-MD
engine's compiled loop), so both engines decide the same way. A stop has a code (0: none); when
several conditions hold at one step the first of :data:`REASONS` is reported. Lengths in Å,
force uncertainty in eV/Å.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: code -> (reason, unit of its value); code 0 is "no stop"
REASONS = {1: ("non_finite_energy", "eV"), 2: ("too_close", "A"), 3: ("bond_broken", "ratio"),
           4: ("uncertainty", "eV/A")}
#: the code of a non-finite energy
NON_FINITE = 1
#: a start-structure pair is bonded when closer than this times the sum of covalent radii
BOND_SCALE = 1.2


def bond_list(Z: np.ndarray, R: np.ndarray, scale: float = BOND_SCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bonds of a start structure: ``(i, j, r0)``, ``i < j``, pairs closer than ``scale`` times
    the sum of their covalent radii (ASE's table, Å), with their start lengths ``r0`` (Å)."""
    from ase.data import covalent_radii

    R = np.asarray(R, np.float64)
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    rc = covalent_radii[np.asarray(Z)]
    i, j = np.nonzero(np.triu(d < scale * (rc[:, None] + rc[None]), k=1))
    return i.astype(np.int32), j.astype(np.int32), d[i, j]


def limits(settings) -> np.ndarray:
    """``[min_distance, bond_factor, uncertainty_upper]`` of :class:`~mmlwf.md.MDSettings`, off as
    ``0``/``inf``, the array :func:`check` compares with."""
    return np.array([settings.min_distance_A,
                     np.inf if settings.bond_factor is None else settings.bond_factor,
                     np.inf if settings.uncertainty_upper_eV_per_A is None else settings.uncertainty_upper_eV_per_A])


def closest_pair(R, i, j, mask, xp: Any = np):
    """``(distance, i, j)`` of the closest of the pairs ``(i, j)`` where ``mask`` (``inf, -1, -1``
    when none is)."""
    d = xp.sqrt(xp.sum((R[i] - R[j]) ** 2, axis=-1))
    d = xp.where(mask, d, xp.inf)
    k = xp.argmin(d)
    ok = mask[k]
    return d[k], xp.where(ok, i[k], -1), xp.where(ok, j[k], -1)


def stretched_bond(R, bonds, xp: Any = np):
    """``(ratio, i, j)``: the bond of ``bonds = (i, j, r0)`` stretched most, its length over its
    start length (``0, -1, -1`` without bonds)."""
    i, j, r0 = bonds
    if len(r0) == 0:
        return xp.asarray(0.0), xp.asarray(-1), xp.asarray(-1)
    ratio = xp.sqrt(xp.sum((R[i] - R[j]) ** 2, axis=-1)) / r0
    k = xp.argmax(ratio)
    return ratio[k], i[k], j[k]


def check(energy, closest, bond, u_atoms, lim, xp: Any = np):
    """``(code, value, atom_a, atom_b)`` of a state: ``closest`` and ``bond`` as returned by
    :func:`closest_pair` and :func:`stretched_bond`, ``u_atoms (n,)`` the per-atom force
    uncertainty (None: not an ensemble), ``lim`` from :func:`limits`. ``value`` is the energy,
    the distance, the stretch ratio or the largest uncertainty (atom ``atom_a``)."""
    if u_atoms is None:
        u_max, u_atom = xp.asarray(0.0), xp.asarray(-1)
    else:
        u_atom = xp.argmax(u_atoms)
        u_max = u_atoms[u_atom]
    conditions = [(~xp.isfinite(energy), energy, -1, -1),
                  (closest[0] < lim[0], closest[0], closest[1], closest[2]),
                  (bond[0] > lim[1], bond[0], bond[1], bond[2]),
                  (u_max > lim[2], u_max, u_atom, -1)]
    code, value, a, b = xp.asarray(0), xp.asarray(0.0), xp.asarray(-1), xp.asarray(-1)
    for k, (hit, v, ia, ib) in reversed(list(enumerate(conditions, start=1))):  # the first holding wins
        code = xp.where(hit, k, code)
        value = xp.where(hit, v, value)
        a, b = xp.where(hit, ia, a), xp.where(hit, ib, b)
    return code, value, a, b


def stop_record(code: int, step: int, dt_fs: float, value: float, a: int, b: int) -> dict | None:
    """``md.json``'s ``stopped`` entry (None for code 0): reason, step, time, value with its unit
    (null when not finite), the atoms involved (0-based, ascending)."""
    code = int(code)
    if code == 0:
        return None
    reason, unit = REASONS[code]
    atoms = sorted(int(x) for x in (a, b) if int(x) >= 0)
    value = float(value)  # a non-finite energy is recorded as null (JSON has no NaN)
    return {"reason": reason, "step": int(step), "time_fs": int(step) * dt_fs,
            "value": value if np.isfinite(value) else None, "unit": unit,
            "atoms": atoms}


def describe(stopped: dict) -> str:
    """One line saying why and when a run stopped."""
    what = {"non_finite_energy": "the energy is not finite",
            "too_close": "atoms {atoms} came {value:.3f} Å apart",
            "bond_broken": "the bond {atoms} stretched to {value:.2f} times its start length",
            "uncertainty": "the force uncertainty of atom {atoms} reached {value:.3g} eV/Å"}[stopped["reason"]]
    atoms = "-".join(str(a) for a in stopped["atoms"])
    return (what.format(atoms=atoms, value=stopped["value"])
            + f" at step {stopped['step']} (t = {stopped['time_fs']:g} fs)")
