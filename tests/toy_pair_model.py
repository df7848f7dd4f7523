"""A toy model kind registered from outside the package: pairwise-distance energies.

Loaded as a plugin (``MMLWF_PLUGINS=tests.toy_pair_model``): this module is the whole of
the new kind — its settings declaration, its flax module and one :func:`register` call. The
energy of a molecule is a learnt per-element energy plus a sum of pair energies, each a
learnt combination of Gaussians of the distance with a cosine cutoff; forces by autodiff.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mmlwf.models.registry import ModelKind, register
from mmlwf.settings.models import ModelSettings

NAME = "toy_pair"


class ToyPairSettings(ModelSettings):
    """Toy pair model: element energies plus pairwise-distance energies."""

    label: ClassVar[str] = "ToyPair"

    type: Literal["toy_pair"] = Field(NAME, description="the model")
    n_basis: int = Field(6, ge=1, description="Gaussians of the distance")
    features: int = Field(4, ge=1, description="element embedding width")
    cutoff: float = Field(4.0, gt=0, description="pair cutoff (A)")


def _module():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class ToyPair(nn.Module):
        n_basis: int = 6
        features: int = 4
        cutoff: float = 4.0

        @nn.compact
        def __call__(self, Z, R, dst, src, atom_graph, atom_mask, pair_mask, graph_mask, Qtot=None):
            B, A = graph_mask.shape[0], Z.shape[0]
            m = atom_mask.astype(R.dtype)
            e_atom = nn.Embed(119, 1, embedding_init=nn.initializers.zeros)(Z)[:, 0]
            emb = nn.Embed(119, self.features)(Z)
            d = R[dst] - R[src]
            r = jnp.sqrt(jnp.where(pair_mask, jnp.sum(d * d, axis=-1), 1.0))
            fc = jnp.where(r < self.cutoff, 0.5 * (jnp.cos(jnp.pi * r / self.cutoff) + 1.0), 0.0)
            rbf = jnp.exp(-2.0 * (r[:, None] - jnp.linspace(0.5, self.cutoff, self.n_basis)) ** 2) * fc[:, None]
            coef = nn.Dense(self.n_basis)(emb[dst] + emb[src])
            e_pair = jnp.sum(coef * rbf, axis=-1) * pair_mask
            e_i = (e_atom + 0.5 * jax.ops.segment_sum(e_pair, dst, A)) * m
            return {"energy": jax.ops.segment_sum(e_i, atom_graph, B), "atomic_energies": e_i}

    ToyPair.__module__ = __name__  # the registry finds a module's kind by its implementation module
    return ToyPair


_CLASS = []


def model_class():
    if not _CLASS:
        _CLASS.append(_module())
    return _CLASS[0]


def build_model(config):
    from mmlwf.models.settings import build

    return build(ToyPairSettings, model_class(), config)


def model_config(model) -> dict:
    from mmlwf.models.settings import settings_of

    return settings_of(ToyPairSettings, model)


def pair_cutoff(model) -> float:
    return float(model.cutoff)


def energy_and_forces(model, params, batch) -> dict:
    """Energies (B,), atomic energies (A,) and forces (A,3) = -dE/dR."""
    from mmlwf.training.losses import energy_and_forces as autodiff

    return autodiff(model.apply, params, batch)


register(ModelKind(
    name=NAME,
    settings=ToyPairSettings,
    module=__name__,
    forward=energy_and_forces,
    predicts_energy=True,
    predict="mmlwf.analysis.predict:predict",
    plots=("learning_curves.png", "parity_energy.png", "parity_forces.png"),
    plot_needs=("E_ref", "E_pred", "F_ref", "F_pred", "Z"),
    exportable=True,
), replace=True)
