"""A second toy model kind, ``toy_pair_long``: the toy pair model (:mod:`tests.toy_pair_model`)
plus a long-range term over the second pair list, the worked example of a kind that defines
``long_pair_cutoff`` (loaded as the plugin ``tests.toy_pair_long_model``, which registers both
toy kinds).

Long-range energy: ``-sqrt(c_i c_j) / (r^6 + a^6)`` per unordered pair (half per directed
pair), ``c`` a learnt positive number per element, ``a`` = :data:`DAMPING`; with a
``long_cutoff`` times a cosine switch to 0 there, without one over every pair of a molecule.
"""

from __future__ import annotations

import importlib
import math
from typing import ClassVar, Literal

from pydantic import Field

from mmlwf.models.registry import ModelKind, register

short = importlib.import_module(".toy_pair_model", __package__)  # imported (and registered) anew when unloaded

NAME = "toy_pair_long"
#: damping length (Å) of the long-range term
DAMPING = 1.5


class ToyPairLongSettings(short.ToyPairSettings):
    """Toy pair model with a long-range term over every pair of a molecule (or within ``long_cutoff``)."""

    label: ClassVar[str] = "ToyPairLong"

    type: Literal["toy_pair_long"] = Field(NAME, description="the model")
    long_cutoff: float | None = Field(None, gt=0, description="long-range cutoff (A); none: every pair")


def long_range_energy(Z, R, dst, src, mask, c, long_cutoff=None):
    """``(P,)`` long-range energy of each directed pair ``src -> dst`` (half of the pair's),
    ``c (119,)`` the per-element strengths; 0 where ``mask`` is False (jax or numpy)."""
    import jax.numpy as jnp

    d = R[dst] - R[src]
    r2 = jnp.where(mask, jnp.sum(d * d, axis=-1), 1.0)
    e = -0.5 * jnp.sqrt(c[Z[dst]] * c[Z[src]]) / (r2**3 + DAMPING**6)
    if long_cutoff is not None:
        r = jnp.sqrt(r2)
        e = e * jnp.where(r < long_cutoff, 0.5 * (jnp.cos(jnp.pi * r / long_cutoff) + 1.0), 0.0)
    return jnp.where(mask, e, 0.0)


def _module():
    import flax.linen as nn
    import jax

    ToyPair = short.model_class()

    class ToyPairLong(nn.Module):
        n_basis: int = 6
        features: int = 4
        cutoff: float = 4.0
        long_cutoff: float | None = None

        @nn.compact
        def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot=None,
                     long_dst=None, long_src=None, long_pair_mask=None):
            out = ToyPair(self.n_basis, self.features, self.cutoff, name="short")(
                Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot)
            if long_dst is None:  # no long-range list: the short one
                long_dst, long_src, long_pair_mask = dst, src, pair_mask
            c = jax.nn.softplus(self.param("c", nn.initializers.constant(0.5), (119,), R.dtype))
            mask = long_pair_mask & atom_mask[long_dst] & atom_mask[long_src]
            e = long_range_energy(Z, R, long_dst, long_src, mask, c, self.long_cutoff)
            e_i = out["atomic_energies"] + jax.ops.segment_sum(e, long_dst, Z.shape[0])
            return {"energy": jax.ops.segment_sum(e_i, atom_graph, graph_mask.shape[0]), "atomic_energies": e_i}

    ToyPairLong.__module__ = __name__  # the registry finds a module's kind by its implementation module
    return ToyPairLong


_CLASS = []


def model_class():
    if not _CLASS:
        _CLASS.append(_module())
    return _CLASS[0]


def build_model(config):
    from mmlwf.models.settings import build

    return build(ToyPairLongSettings, model_class(), config)


def model_config(model) -> dict:
    from mmlwf.models.settings import settings_of

    return settings_of(ToyPairLongSettings, model)


def pair_cutoff(model) -> float:
    return float(model.cutoff)


def long_pair_cutoff(model) -> float:
    """``long_cutoff``; every pair of a molecule (inf) without one."""
    return math.inf if model.long_cutoff is None else float(model.long_cutoff)


register(ModelKind(
    name=NAME,
    settings=ToyPairLongSettings,
    module=__name__,
    forward=short.energy_and_forces,
    predicts_energy=True,
    predict="mmlwf.analysis.predict:predict",
    plots=("learning_curves.png", "parity_energy.png", "parity_forces.png"),
    plot_needs=("E_ref", "E_pred", "F_ref", "F_pred", "Z"),
    exportable=True,
), replace=True)
