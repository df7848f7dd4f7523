"""The pair geometry both models start from: distances and the e3x radial x angular basis."""

from __future__ import annotations

import e3x
import jax.numpy as jnp


def pair_basis(R, dst, src, pair_weight, *, cutoff: float, num_basis_functions: int, max_degree: int):
    """``(r, basis)`` of the pairs ``src -> dst``.

    ``pair_weight (P,)`` is 1 for real pairs and 0 for padding (or pairs touching a masked
    atom): those get a constant unit displacement, so no NaN reaches a gradient, and a zero
    basis. ``r (P,)`` in Å; ``basis (P, 1, (max_degree+1)^2, num_basis_functions)``: racah
    spherical harmonics times reciprocal Bernstein radial functions times e3x's smooth cutoff,
    the message-passing filter of e3x.
    """
    dtype = R.dtype
    disp = R[src] - R[dst]
    disp = jnp.where((pair_weight > 0)[:, None], disp, jnp.asarray([1.0, 0.0, 0.0], dtype))
    r2 = jnp.sum(disp * disp, axis=-1)
    r2 = jnp.where(r2 > 0, r2, 1.0)  # coincident atoms: no NaN (their basis is meaningless anyway)
    r = jnp.sqrt(r2)
    unit = disp / r[:, None]
    cut = e3x.nn.smooth_cutoff(r, cutoff=cutoff) * pair_weight  # 0 beyond cutoff and for padding
    rbf = e3x.nn.reciprocal_bernstein(r, num_basis_functions) * cut[:, None]  # (P, K)
    ylm = e3x.so3.spherical_harmonics(unit, max_degree, r_is_normalized=True, normalization="racah")
    # e3x's basis functions may compute in the default float type (float64 under
    # jax_enable_x64): keep the model's dtype so float32 and float64 models both stay pure
    basis = (ylm[:, :, None] * rbf[:, None, :])[:, None]
    return r, basis.astype(dtype)
