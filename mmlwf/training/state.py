"""The train state and the jitted train and evaluation steps.

The state is a dict pytree ``{"params", "opt_state", "ema_params"}`` (``ema_params`` is None
when EMA is off); host-side counters live in the checkpoint's JSON meta. One step:
forward + forces, masked loss, gradients, optimiser update (or accumulation), EMA update
after each real update. A step with a non-finite loss or gradient leaves the state as it was
and reports ``ok = False``; the host loop then stops with a message.

With a :class:`~.parallel.DataParallel` (``parallel=``) the step takes the stacked, sharded
batches of several devices and the loss is formed from the error sums added over them
(see :mod:`.parallel`); without one the step is the plain single-device program.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from .losses import batch_sums, energy_and_forces, loss_from_sums, prepare_batch
from .monitor import ShapeCountingJit
from .optim import did_update, ema_decay_at
from .step_metrics import pack_metrics

if TYPE_CHECKING:
    from .loaders import Loader
    from .parallel import DataParallel


def _tree_norm(tree):
    import optax

    tree_api = getattr(optax, "tree", None)  # optax >= 0.2.4; global_norm is deprecated there
    return tree_api.norm(tree) if tree_api is not None and hasattr(tree_api, "norm") else optax.global_norm(tree)


def make_forward(model, training=None) -> Callable:
    """``forward(params, batch) -> outputs`` of a flax model: its registered kind's forward
    (:mod:`mmlwf.models.registry`; PhysNet: energies and forces masked on padding, DCMNet:
    the ESP with ``training.esp_decay_length``), or for an unregistered module with the
    PhysNet call signature the autodiff forces of ``model.apply``. ``training``: the
    training settings (their options, e.g. ``esp_decay_length``; defaults without them)."""
    from ..models.registry import kind_of_model

    kind = kind_of_model(model)
    if kind is None:
        return partial(energy_and_forces, model.apply)
    if training is None:
        from ..settings import TrainingSettings

        training = TrainingSettings()
    return kind.make_forward(model, training)


def init_state(variables, tx, ema: bool) -> dict:
    """A fresh state. The EMA starts as a copy of the parameters."""
    import jax
    import jax.numpy as jnp

    return {
        "params": variables,
        "opt_state": jax.jit(tx.init)(variables),
        "ema_params": jax.tree.map(jnp.array, variables) if ema else None,
    }


def make_loss_fn(forward: Callable, weights: Mapping[str, float], energy_loss: str, parallel=None) -> Callable:
    """``loss_fn(params, batch) -> (loss, sums)`` (not jitted).

    With ``parallel`` (a :class:`~.parallel.DataParallel`) ``batch`` is the stacked batch of
    the devices and ``sums`` are added over them before the loss is formed.
    """
    import jax.numpy as jnp

    weights = dict(weights)
    if parallel is None:
        def sums_of(params, batch):
            return batch_sums(forward(params, batch), batch)
    else:
        sums_of = parallel.global_sums(forward, batch_sums)

    def loss_fn(params, batch):
        sums = sums_of(params, batch)
        return loss_from_sums(sums, weights, energy_loss, jnp), sums

    return loss_fn


def make_train_step(forward: Callable, tx, weights: Mapping[str, float], energy_loss: str, ema_decay: float,
                    parallel=None):
    """``step(state, batch, lr_factor) -> (state, metrics)``, jitted, state donated.

    ``metrics``: ``loss``, ``grad_norm``, ``ok`` and the batch's error sums (before the update),
    packed in one :class:`~.step_metrics.StepMetrics` (one transfer to the host).
    ``lr_factor`` (float32 scalar) multiplies the updates (the reduce-on-plateau factor).
    With ``parallel``: ``batch`` is :meth:`DataParallel.stack` 's output, the state is
    replicated over its devices and stays so, and the sums are those of all the devices.
    """
    import jax
    import jax.numpy as jnp
    import optax

    loss_fn = make_loss_fn(forward, weights, energy_loss, parallel)

    def step(state, batch, lr_factor):
        params = state["params"]
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        grad_norm = _tree_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        updates = jax.tree.map(lambda u: u * lr_factor.astype(u.dtype), updates)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "ema_params": None}
        if state["ema_params"] is not None:
            d = ema_decay_at(ema_decay, opt_state)
            moved = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema_params"], new["params"])
            upd = did_update(tx, opt_state)
            new["ema_params"] = jax.tree.map(lambda m, e: jnp.where(upd, m, e), moved, state["ema_params"])
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        return new, pack_metrics({"loss": loss, "grad_norm": grad_norm, "ok": ok, **sums})

    if parallel is None:
        return ShapeCountingJit(step, donate_argnums=(0,))
    return ShapeCountingJit(step, donate_argnums=(0,), out_shardings=parallel.replicated)


def make_eval_step(forward: Callable, parallel=None):
    """``eval_step(params, batch) -> error sums``, jitted (with ``parallel``: of the stacked
    batches of the devices, added over them)."""
    if parallel is not None:
        return ShapeCountingJit(parallel.global_sums(forward, batch_sums), out_shardings=parallel.replicated)

    def step(params, batch):
        return batch_sums(forward(params, batch), batch)

    return ShapeCountingJit(step)


def evaluate_sums(eval_step: Callable, params, loader: Loader, table: np.ndarray | None,
                  parallel: DataParallel | None = None) -> dict[str, float] | None:
    """Error sums (float64) of ``params`` over every batch of ``loader`` (epoch 0 order).

    With ``parallel``, ``eval_step`` is the data-parallel one (``make_eval_step(forward,
    parallel)``), ``params`` are replicated and the batches go to the devices in groups."""
    import jax

    if parallel is None:
        results = [eval_step(params, prepare_batch(batch, table)) for batch in loader.epoch(0)]
    else:
        results = [eval_step(params, parallel.stack([prepare_batch(b, table) for b in group]))
                   for group in parallel.groups(loader.epoch(0))]
    if not results:
        return None
    host = jax.device_get(results)
    return {k: float(np.sum([np.float64(r[k]) for r in host])) for k in host[0]}
