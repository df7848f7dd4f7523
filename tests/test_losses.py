"""The energy term of the loss under each ``training.energy_loss`` (padding excluded)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mmlwf.settings.training import ENERGY_LOSSES
from mmlwf.training.losses import ENERGY_LOSS_SUMS, batch_sums, loss_from_sums


def test_energy_loss_divides_the_error_by_1_sqrt_n_or_n():
    assert tuple(ENERGY_LOSS_SUMS) == ENERGY_LOSSES  # one name per option, each with its sums
    n_atoms = np.array([3, 12, 0], np.int32)  # the third graph is padding
    err = np.array([0.3, -1.2, 50.0])
    batch = {"E_target": jnp.zeros(3), "graph_mask": jnp.asarray([True, True, False]),
             "atom_mask": jnp.ones(15, bool), "n_atoms": jnp.asarray(n_atoms)}
    sums = batch_sums({"energy": jnp.asarray(err, jnp.float32)}, batch)
    real = err[:2], n_atoms[:2].astype(float)
    expected = {"per_molecule": np.mean(real[0] ** 2), "per_sqrt_atom": np.mean(real[0] ** 2 / real[1]),
                "per_atom": np.mean((real[0] / real[1]) ** 2)}
    for mode, value in expected.items():
        assert float(loss_from_sums(sums, {"energy": 2.0}, mode, jnp)) == pytest.approx(2.0 * value, rel=1e-6)
    assert float(sums["energy_sqrt_atom_sae"]) == pytest.approx(0.3 / np.sqrt(3) + 1.2 / np.sqrt(12), rel=1e-6)
