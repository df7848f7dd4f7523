"""Tolerances for comparing results that may be summed in another order.

Equality of predictions under padding, batch company or device count is exact in real
arithmetic; on a computer it holds to the rounding of the sums involved, and the order of a
sum is up to the library (XLA reorders reductions between versions and CPUs). So such
properties are tested in float64 with a tight tolerance (:data:`FLOAT64_RTOL`), and float32
results are compared with a tolerance derived from float32 rounding of the magnitude of the
quantity (:func:`float32_atol`), never with a fixed absolute number.
"""

from __future__ import annotations

import numpy as np

FLOAT64_RTOL = 1e-11  # float64 sums of a few hundred terms in another order
F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def float32_atol(*arrays, ulps: float = 64.0) -> float:
    """Absolute tolerance for float32 values of the magnitude of ``arrays``: ``ulps`` float32
    roundings of the largest |value| (a sum of n terms reordered differs by up to ~n ulps of
    its largest partial sum; 64 covers the sums of tens of terms in these models)."""
    scale = max(float(np.max(np.abs(np.asarray(a, np.float64)))) for a in arrays)
    return ulps * F32_EPS * max(scale, 1.0)


def to_float64(tree: dict) -> dict:
    """A copy of a batch or parameter dict with every floating array in float64."""
    import jax

    return jax.tree.map(lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else a, tree)
