"""The ZBL universal nuclear repulsion (Ziegler, Biersack & Littmark, 1985), kept to short
range: fully on below ``ZBL_ON`` times the sum of the two atoms' covalent radii (ase's table),
switched off smoothly (PhysNet's polynomial switch) by ``ZBL_OFF`` times it, so it adds
nothing at bonding distances and only keeps atoms from passing through each other.

Shapes: ``A`` atoms, ``P`` directed pairs ``src -> dst``; Å and eV.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from ..constants import BOHR, COULOMB_CONSTANT, Z_TABLE_SIZE
from .coulomb import polynomial_switch

# ZBL universal screening function: sum_k c_k exp(-d_k r / a), a = 0.8854 a0 / (Z1^0.23 + Z2^0.23)
ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)
#: fractions of the covalent radii sum: ZBL fully on below ZBL_ON, 0 beyond ZBL_OFF
ZBL_ON = 0.5
ZBL_OFF = 0.75
#: covalent radii (Å) by atomic number, from ase.data
_RADII = np.asarray(covalent_radii[:Z_TABLE_SIZE], np.float64)


def zbl_pair_energy(zi, zj, r):
    """The full ZBL energy (eV) of nuclei with charges ``zi``, ``zj`` (> 0) at distance ``r`` (Å)."""
    a = 0.8854 * BOHR / (zi**0.23 + zj**0.23)
    x = r / a
    phi = sum(c * jnp.exp(-d * x) for c, d in zip(ZBL_C, ZBL_D))
    return COULOMB_CONSTANT * zi * zj / r * phi


def zbl_switch(Zi, Zj, r):
    """1 below ``ZBL_ON * (rcov_i + rcov_j)``, 0 beyond ``ZBL_OFF * (rcov_i + rcov_j)``, smooth between."""
    radii = jnp.asarray(_RADII, r.dtype)
    rsum = radii[Zi] + radii[Zj]
    return 1.0 - polynomial_switch((r - ZBL_ON * rsum) / ((ZBL_OFF - ZBL_ON) * rsum))


def zbl_atomic_energies(Z, r, dst, src, pair_weight, n_atoms: int):
    """``(A,)`` each atom's share of the short-range ZBL energy (eV): each directed pair gives
    half its energy to ``dst``; ``pair_weight (P,)`` 0 for padding (``Z`` 0 there is harmless)."""
    Zi, Zj = Z[dst], Z[src]
    zi = jnp.maximum(Zi, 1).astype(r.dtype)  # padding atoms (Z=0): finite, weighted out
    zj = jnp.maximum(Zj, 1).astype(r.dtype)
    e_pair = 0.5 * zbl_pair_energy(zi, zj, r) * zbl_switch(Zi, Zj, r) * pair_weight
    return jax.ops.segment_sum(e_pair, dst, num_segments=n_atoms)
