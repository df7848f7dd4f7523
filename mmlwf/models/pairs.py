"""The pair geometry both models start from: distances and the radial x angular basis."""

from __future__ import annotations

import e3x
import jax.numpy as jnp
import numpy as np

from ..physics.coulomb import polynomial_switch


def pair_distances(R, dst, src, pair_weight):
    """``(r (P,), unit (P, 3))`` of the pairs ``src -> dst`` in Å.

    ``pair_weight (P,)`` is 1 for real pairs and 0 for padding (or pairs touching a masked
    atom): those get a constant unit displacement, so no NaN reaches a gradient.
    """
    disp = R[src] - R[dst]
    disp = jnp.where((pair_weight > 0)[:, None], disp, jnp.asarray([1.0, 0.0, 0.0], R.dtype))
    r2 = jnp.sum(disp * disp, axis=-1)
    r2 = jnp.where(r2 > 0, r2, 1.0)  # coincident atoms: no NaN (their basis is meaningless anyway)
    r = jnp.sqrt(r2)
    return r, disp / r[:, None]


def exp_normal(r, num_basis_functions: int, cutoff: float):
    """PhysNet's radial functions ``(P, K)``: ``exp(-beta (exp(-r) - mu_k)^2)`` with ``mu_k``
    evenly from 1 to ``exp(-cutoff)`` and ``beta = (K / (2 (1 - exp(-cutoff))))^2`` (the
    original's start values, kept fixed here), times its cutoff ``1 - polynomial_switch(r/cutoff)``."""
    k = num_basis_functions
    mu = jnp.asarray(np.linspace(1.0, np.exp(-cutoff), k), r.dtype)
    beta = (k / (2.0 * (1.0 - np.exp(-cutoff)))) ** 2
    cut = 1.0 - polynomial_switch(r / cutoff)
    return cut[:, None] * jnp.exp(-beta * (jnp.exp(-r)[:, None] - mu) ** 2)


def pair_basis(R, dst, src, pair_weight, *, cutoff: float, num_basis_functions: int, max_degree: int,
               basis: str = "bernstein"):
    """``(r, basis)`` of the pairs ``src -> dst`` (padding pairs as in :func:`pair_distances`,
    with a zero basis).

    ``r (P,)`` in Å; ``basis (P, 1, (max_degree+1)^2, num_basis_functions)``: racah spherical
    harmonics times radial functions that vanish at ``cutoff``: ``"bernstein"``, e3x's
    reciprocal Bernstein polynomials times e3x's smooth cutoff (the message-passing filter of
    e3x), or ``"exp_normal"``, PhysNet's (:func:`exp_normal`).
    """
    dtype = R.dtype
    r, unit = pair_distances(R, dst, src, pair_weight)
    if basis == "exp_normal":
        rbf = exp_normal(r, num_basis_functions, cutoff) * pair_weight[:, None]  # (P, K), 0 for padding
    else:
        cut = e3x.nn.smooth_cutoff(r, cutoff=cutoff) * pair_weight  # 0 beyond cutoff and for padding
        rbf = e3x.nn.reciprocal_bernstein(r, num_basis_functions) * cut[:, None]
    ylm = e3x.so3.spherical_harmonics(unit, max_degree, r_is_normalized=True, normalization="racah")
    # e3x's basis functions may compute in the default float type (float64 under
    # jax_enable_x64): keep the model's dtype so float32 and float64 models both stay pure
    basis_ = (ylm[:, :, None] * rbf[:, None, :])[:, None]
    return r, basis_.astype(dtype)
