"""Grimme's D3 dispersion with Becke-Johnson (rational) damping, two-body term, in JAX.

D3: Grimme, Antony, Ehrlich, Krieg, JCP 132, 154104 (2010); BJ damping: Grimme, Ehrlich,
Goerigk, JCC 32, 1456 (2011). Computed as simple-dftd3 1.7.0 (the ``dftd3`` package with
``RationalDampingParam(method=..., atm=False)``) computes it, without the three-body term
(as in PhysNet, Unke & Meuwly, JCTC 15, 3678 (2019)):

- coordination numbers ``CN_i = Σ_j 1 / (1 + exp(-16 (Rcov_i + Rcov_j) / r_ij + 16))`` over
  pairs within 40 bohr (``Rcov``: 4/3 of the Pyykkö-Atsumi radii);
- ``C6_ij = Σ_ab W_ia W_jb C6ref_ij,ab`` with Gaussian weights
  ``W_ia ∝ exp(-4 (CN_i - CNref_ia)^2)`` normalised by a log-sum-exp (shifted by the closest
  reference, as simple-dftd3 1.7.0 does, so no weight underflows to 0/0);
- ``E = -Σ_{i<j} C6_ij (s6 / (r^6 + R0^6) + s8 3 Q_i Q_j / (r^8 + R0^8))`` with
  ``Q = sqrt(0.5 <r4>/<r2> sqrt(Z))``, ``R0 = a1 sqrt(3 Q_i Q_j) + a2`` (bohr), pairs within
  60 bohr, half of each pair's energy on each atom.

Inputs in Å, energies in eV: converted to bohr and hartree with :mod:`ase.units` (via
:mod:`mmlwf.units`), the constants of the ``dftd3`` package's ASE calculator.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError, did_you_mean
from ..units import factor
from .d3_tables import d3_tables

#: Å per bohr and eV per hartree (ase.units, as the dftd3 package's ASE calculator)
BOHR = factor("length", "bohr")
HARTREE = factor("energy", "hartree")
#: steepness of the coordination-number counting function (simple-dftd3 ``default_kcn``)
K_CN = 16.0
#: Gaussian weighting factor of the reference coordination numbers (``wf_default``)
WEIGHT_FACTOR = 4.0
#: simple-dftd3's default real-space cutoffs, bohr: two-body term and coordination numbers
DISP2_CUTOFF_BOHR = 60.0
CN_CUTOFF_BOHR = 40.0
#: pairs closer than these (squared distance, bohr²) are skipped, as in simple-dftd3
_CN_MIN_R2 = 1e-12
_DISP_MIN_R2 = float(np.finfo(np.float64).eps)
#: the trained damping parameters, in this order
PARAMETERS = ("s6", "s8", "a1", "a2")


def _normalise(name: str) -> str:
    """simple-dftd3's spelling of a method name: lower case, hyphens dropped."""
    return str(name).strip().lower().replace("-", "")


def functionals() -> tuple[str, ...]:
    """The method names :func:`damping_parameters` knows (simple-dftd3's D3(BJ) list)."""
    return d3_tables().functionals


def damping_parameters(functional: str) -> dict[str, float]:
    """D3(BJ) parameters ``{s6, s8, a1, a2}`` of a functional (a2 in bohr), e.g. ``"pbe0"``.

    Names as simple-dftd3 spells them, case and hyphens ignored (``"B97-D"`` = ``"b97d"``).
    """
    tables = d3_tables()
    key = _normalise(functional)
    if key not in tables.functionals:
        raise ConfigError(
            f"unknown D3(BJ) functional {functional!r}{did_you_mean(key, tables.functionals)}; "
            f"known: mmlwf.physics.d3.functionals() ({len(tables.functionals)} names)"
        )
    row = tables.damping[tables.functionals.index(key)]
    return {name: float(value) for name, value in zip(PARAMETERS, row)}


def _cutoff_bohr(cutoff: float | None, default: float) -> float:
    """A cutoff in Å (None: simple-dftd3's default) in bohr."""
    return default if cutoff is None else float(cutoff) / BOHR


@partial(jax.jit, static_argnames=("n_atoms", "cutoff", "cn_cutoff"))
def d3_atomic_energies(
    Z: jax.Array,
    r: jax.Array,
    dst: jax.Array,
    src: jax.Array,
    pair_weight: jax.Array,
    n_atoms: int,
    *,
    s6: float | jax.Array,
    s8: float | jax.Array,
    a1: float | jax.Array,
    a2: float | jax.Array,
    cutoff: float | None = None,
    cn_cutoff: float | None = None,
) -> jax.Array:
    """D3(BJ) two-body dispersion energy of each atom, eV.

    ``Z`` (A,) atomic numbers (0 for padding atoms); ``r`` (P,) distances in Å of the directed
    pairs ``dst <- src`` (each unordered pair listed both ways); ``pair_weight`` (P,) 1 for
    real pairs, 0 for padding (a pair's counts and energy are multiplied by it); ``s6``, ``s8``,
    ``a1`` (dimensionless), ``a2`` (bohr) the damping parameters. ``cutoff`` and
    ``cn_cutoff`` (Å) limit the pairs of the energy and of the coordination numbers (None:
    simple-dftd3's 60 and 40 bohr). Returns (A,) eV; their sum is the dispersion energy.
    Differentiable in ``r`` and the parameters; padding pairs and coincident atoms give
    zero, finite gradients. Jitted (``n_atoms`` and the cutoffs static).
    """
    t = d3_tables()
    r = jnp.asarray(r)
    dtype = r.dtype if jnp.issubdtype(r.dtype, jnp.floating) else jnp.result_type(float)
    r_b = r.astype(dtype) / BOHR  # (P,) bohr
    r2 = r_b * r_b
    real = pair_weight != 0
    cn_cut = _cutoff_bohr(cn_cutoff, CN_CUTOFF_BOHR)
    disp_cut = _cutoff_bohr(cutoff, DISP2_CUTOFF_BOHR)
    in_cn = real & (r2 >= _CN_MIN_R2) & (r2 <= cn_cut * cn_cut)
    in_disp = real & (r2 >= _DISP_MIN_R2) & (r2 <= disp_cut * disp_cut)
    safe_r = jnp.where(in_cn | in_disp, r_b, 1.0)  # no 1/0 in padding pairs, nor in gradients
    weight = jnp.asarray(pair_weight, dtype)
    zi, zj = Z[dst], Z[src]

    # coordination numbers (A,)
    rcov = jnp.asarray(t.rcov, dtype)
    count = jax.nn.sigmoid(K_CN * ((rcov[zi] + rcov[zj]) / safe_r - 1.0))
    cn = jax.ops.segment_sum(jnp.where(in_cn, weight * count, 0.0), dst, num_segments=n_atoms)

    # Gaussian weights of the reference systems (A, R), log-sum-exp normalised
    n_ref = t.ref_cn.shape[1]
    has_ref = jnp.asarray(np.arange(n_ref)[None, :] < t.n_ref[:, None])[Z]  # (A, R)
    d2 = (jnp.asarray(t.ref_cn, dtype)[Z] - cn[:, None]) ** 2
    d2_min = jnp.min(jnp.where(has_ref, d2, jnp.inf), axis=1, keepdims=True)
    gw = jnp.where(has_ref, jnp.exp(-WEIGHT_FACTOR * (jnp.where(has_ref, d2, d2_min) - d2_min)), 0.0)
    gw = gw / jnp.sum(gw, axis=1, keepdims=True)

    # pair C6 (P,) and rational damping
    c6_ref = jnp.asarray(t.c6, dtype)[zi, zj]  # (P, R, R)
    c6 = jnp.einsum("pa,pb,pab->p", gw[dst], gw[src], c6_ref)
    r4r2 = jnp.asarray(t.r4r2, dtype)
    qq = 3.0 * r4r2[zi] * r4r2[zj]
    r0 = a1 * jnp.sqrt(qq) + a2
    e_pair = -c6 * (s6 / (safe_r**6 + r0**6) + s8 * qq / (safe_r**8 + r0**8))
    e_pair = jnp.where(in_disp, 0.5 * weight * e_pair, 0.0)
    return HARTREE * jax.ops.segment_sum(e_pair, dst, num_segments=n_atoms)


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class D3Dispersion(nn.Module):
    """D3(BJ) atomic dispersion energies (eV) with trained damping parameters, as in PhysNet.

    ``s6``, ``s8``, ``a1``, ``a2`` start at ``functional``'s published values and are kept
    positive as softplus of the raw parameters ``s6_raw`` ... (PhysNet's parametrisation);
    a functional with a parameter <= 0 cannot start there and is refused.
    ``cutoff`` (Å, None: 60 bohr) limits the two-body pairs. Called as
    ``D3Dispersion(functional)(Z, r, dst, src, pair_weight, n_atoms) -> (A,)``.
    """

    functional: str = "hf"
    cutoff: float | None = None

    def start_values(self) -> dict[str, float]:
        values = damping_parameters(self.functional)
        bad = {name: value for name, value in values.items() if not value > 0.0}
        if bad:
            shown = ", ".join(f"{name}={value:g}" for name, value in bad.items())
            raise ConfigError(
                f"D3 functional {self.functional!r} has {shown}: the trained damping parameters "
                "are kept positive (softplus), so it cannot be a starting point"
            )
        return values

    @nn.compact
    def __call__(self, Z, r, dst, src, pair_weight, n_atoms: int) -> jax.Array:
        r = jnp.asarray(r)
        dtype = r.dtype if jnp.issubdtype(r.dtype, jnp.floating) else jnp.result_type(float)
        params = {
            name: jax.nn.softplus(
                self.param(f"{name}_raw", lambda _, v=value: jnp.asarray(_inverse_softplus(v), dtype))
            )
            for name, value in self.start_values().items()
        }
        return d3_atomic_energies(Z, r, dst, src, pair_weight, n_atoms, cutoff=self.cutoff, **params)
