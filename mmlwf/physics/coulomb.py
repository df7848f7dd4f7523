"""PhysNet's electrostatics: the shielded Coulomb kernel switched to the bare one, without a
long-range cutoff or with PhysNet's shifted cutoff variant (Unke & Meuwly, JCTC 15, 3678
(2019), eq. 12; the reference implementation's ``electrostatic_energy_per_atom``).

Shapes: ``A`` atoms, ``P`` directed pairs ``src -> dst``; distances in Å, charges in e,
energies in eV.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..constants import COULOMB_CONSTANT


def polynomial_switch(x):
    """PhysNet's switch ``6x^5 - 15x^4 + 10x^3``: 0 at ``x <= 0``, 1 at ``x >= 1``, value,
    slope and curvature continuous."""
    x = jnp.clip(x, 0.0, 1.0)
    x3 = x * x * x
    return x3 * (10.0 + x * (-15.0 + 6.0 * x))


def coulomb_kernel(r, sr_cut: float, lr_cut: float | None = None):
    """``chi(r) (P,)`` in 1/Å such that a pair's energy is ``k_e q_i q_j chi(r)``.

    ``s = polynomial_switch(r / (sr_cut/2))``; without ``lr_cut``:
    ``chi = (1-s)/sqrt(r^2+1) + s/r``; with it, both branches shifted so that value and slope
    are 0 at ``lr_cut``: ``(1-s)(1/d + d/lr^2 - 2/lr) + s(1/r + r/lr^2 - 2/lr)``
    (``d = sqrt(r^2+1)``) for ``r <= lr_cut``, else 0.
    """
    s = polynomial_switch(r / (0.5 * sr_cut))
    shielded = jnp.sqrt(r * r + 1.0)
    if lr_cut is None:
        return (1.0 - s) / shielded + s / r
    lr2 = lr_cut * lr_cut
    chi = ((1.0 - s) * (1.0 / shielded + shielded / lr2 - 2.0 / lr_cut)
           + s * (1.0 / r + r / lr2 - 2.0 / lr_cut))
    return jnp.where(r <= lr_cut, chi, 0.0)


def coulomb_atomic_energies(q, r, dst, src, pair_weight, n_atoms: int, *, sr_cut: float,
                            lr_cut: float | None = None):
    """``(A,)`` each atom's share of the electrostatic energy (eV) of charges ``q (A,)``: each
    directed pair ``src -> dst`` gives half its pair energy to ``dst``; ``pair_weight (P,)``
    is 0 for padding pairs (whose ``r`` must be finite and nonzero)."""
    e_pair = 0.5 * COULOMB_CONSTANT * q[dst] * q[src] * coulomb_kernel(r, sr_cut, lr_cut) * pair_weight
    return jax.ops.segment_sum(e_pair, dst, num_segments=n_atoms)
