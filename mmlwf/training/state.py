"""The train state and the jitted train and evaluation steps.

The state is a dict pytree ``{"params", "opt_state", "ema_params"}`` (``ema_params`` is None
when EMA is off); host-side counters live in the checkpoint's JSON meta. One step:
forward + forces, masked loss, gradients, optimiser update (or accumulation), EMA update
after each real update. A step with a non-finite loss or gradient leaves the state as it was
and reports ``ok = False``; the host loop then stops with a message.

With a :class:`~.parallel.DataParallel` (``parallel=``) the step takes the stacked, sharded
batches of several devices and the loss is formed from the error sums added over them
(see :mod:`.parallel`); without one the step is the plain single-device program.

An ensemble (``members`` M > 1, :mod:`mmlwf.ensemble`): every leaf of the state has a leading
member axis; the forward and the error sums are vmapped over it with the batch shared (inside
the per-device program with data parallelism), the loss is the sum of the members' losses, so
one gradient gives each member its own, and the optimiser update, gradient clipping, the
finite check and the EMA are vmapped per member (:func:`_update`, the single model's update).
The step's metrics are the members' means (``ok``: all members finite).
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


def init_state(variables, tx, ema: bool, members: int = 1) -> dict:
    """A fresh state. The EMA starts as a copy of the parameters. ``members`` M > 1: the
    variables are stacked over members and so is the optimiser's state."""
    import jax
    import jax.numpy as jnp

    return {
        "params": variables,
        "opt_state": jax.jit(tx.init if members == 1 else jax.vmap(tx.init))(variables),
        "ema_params": jax.tree.map(jnp.array, variables) if ema else None,
    }


def member_functions(forward: Callable, members: int = 1) -> tuple[Callable, Callable]:
    """``(forward, sums_fn)`` of ``members`` models: as given for one, else vmapped over the
    leading member axis of the parameters with the batch shared (outputs and sums ``(M, ...)``);
    a batch's ``sample_weight (M, B)`` (bootstrap, :mod:`.bootstrap`) weights member ``m``'s
    sums with its row ``m``."""
    if members == 1:
        return forward, batch_sums
    import jax

    def sums_fn(out, batch):
        weight = batch.get("sample_weight")
        if weight is None:
            return jax.vmap(batch_sums, in_axes=(0, None))(out, batch)
        return jax.vmap(batch_sums, in_axes=(0, None, 0))(out, batch, weight)

    return jax.vmap(forward, in_axes=(0, None)), sums_fn


def make_loss_fn(forward: Callable, weights: Mapping[str, float], energy_loss: str, parallel=None,
                 members: int = 1) -> Callable:
    """``loss_fn(params, batch) -> (loss, sums)`` (not jitted).

    With ``parallel`` (a :class:`~.parallel.DataParallel`) ``batch`` is the stacked batch of
    the devices and ``sums`` are added over them before the loss is formed. With ``members``
    M > 1: ``loss`` is the sum of the members' losses and the aux ``(losses (M,), sums (M,))``.
    """
    import jax.numpy as jnp

    weights = dict(weights)
    forward, sums_fn = member_functions(forward, members)
    if parallel is None:
        def sums_of(params, batch):
            return sums_fn(forward(params, batch), batch)
    else:
        sums_of = parallel.global_sums(forward, sums_fn)

    def loss_fn(params, batch):
        sums = sums_of(params, batch)
        loss = loss_from_sums(sums, weights, energy_loss, jnp)
        return (loss, sums) if members == 1 else (jnp.sum(loss), (loss, sums))

    return loss_fn


def _update(tx, ema_decay: float, state: dict, grads, loss, lr_factor) -> tuple[dict, dict]:
    """One model's update: ``(new state, {grad_norm, ok})``; a non-finite loss or gradient keeps
    the state as it was."""
    import jax
    import jax.numpy as jnp
    import optax

    params = state["params"]
    grad_norm = _tree_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    updates = jax.tree.map(lambda u: u * lr_factor.astype(u.dtype), updates)
    new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "ema_params": None}
    if state["ema_params"] is not None:
        d = ema_decay_at(ema_decay, opt_state)
        moved = jax.tree.map(lambda e, p: jnp.where(e == p, e, d * e + (1.0 - d) * p),  # frozen: exactly kept
                             state["ema_params"], new["params"])
        upd = did_update(tx, opt_state)
        new["ema_params"] = jax.tree.map(lambda m, e: jnp.where(upd, m, e), moved, state["ema_params"])
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    return new, {"grad_norm": grad_norm, "ok": ok}


def make_train_step(forward: Callable, tx, weights: Mapping[str, float], energy_loss: str, ema_decay: float,
                    parallel=None, members: int = 1):
    """``step(state, batch, lr_factor) -> (state, metrics)``, jitted, state donated.

    ``metrics``: ``loss``, ``grad_norm``, ``ok`` and the batch's error sums (before the update),
    packed in one :class:`~.step_metrics.StepMetrics` (one transfer to the host).
    ``lr_factor`` (float32 scalar) multiplies the updates (the reduce-on-plateau factor).
    With ``parallel``: ``batch`` is :meth:`DataParallel.stack` 's output, the state is
    replicated over its devices and stays so, and the sums are those of all the devices.
    ``members`` M > 1: an ensemble (see the module docstring).
    """
    import jax
    import jax.numpy as jnp

    loss_fn = make_loss_fn(forward, weights, energy_loss, parallel, members)
    update = partial(_update, tx, ema_decay)

    def step(state, batch, lr_factor):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        if members == 1:
            new, info = update(state, grads, loss, lr_factor)
            return new, pack_metrics({"loss": loss, **info, **sums})
        losses, sums = sums
        new, info = jax.vmap(update, in_axes=(0, 0, 0, None))(state, grads, losses, lr_factor)
        means = {k: jnp.mean(v) for k, v in {"loss": losses, "grad_norm": info["grad_norm"], **sums}.items()}
        return new, pack_metrics({**means, "ok": jnp.all(info["ok"])})

    if parallel is None:
        return ShapeCountingJit(step, donate_argnums=(0,))
    return ShapeCountingJit(step, donate_argnums=(0,), out_shardings=parallel.replicated)


#: the key of an ensemble's per-member error sums in :func:`make_eval_step`'s output
MEMBER_SUMS = "members"


def ensemble_sums(out: Mapping, batch: Mapping) -> dict:
    """Error sums of members' outputs ``(M, ...)``: those of the ensemble's prediction (the
    member mean) and, under ``members``, each member's ``(M,)``."""
    import jax

    mean = {k: v.mean(axis=0) for k, v in out.items()}
    return {**batch_sums(mean, batch), MEMBER_SUMS: jax.vmap(batch_sums, in_axes=(0, None))(out, batch)}



def make_eval_step(forward: Callable, parallel=None, members: int = 1):
    """``eval_step(params, batch) -> error sums``, jitted (with ``parallel``: of the stacked
    batches of the devices, added over them); an ensemble's: :func:`ensemble_sums`."""
    sums_fn = batch_sums
    if members > 1:
        import jax

        forward, sums_fn = jax.vmap(forward, in_axes=(0, None)), ensemble_sums
    if parallel is not None:
        return ShapeCountingJit(parallel.global_sums(forward, sums_fn), out_shardings=parallel.replicated)

    def step(params, batch):
        return sums_fn(forward(params, batch), batch)

    return ShapeCountingJit(step)


def evaluate_sums(eval_step: Callable, params, loader: Loader, table: np.ndarray | None,
                  parallel: DataParallel | None = None) -> dict[str, float] | None:
    """Error sums (float64) of ``params`` over every batch of ``loader`` (epoch 0 order); an
    ensemble's per-member sums ``(M,)`` under :data:`MEMBER_SUMS`.

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

    def total(values):
        summed = np.sum([np.asarray(v, np.float64) for v in values], axis=0)
        return float(summed) if summed.ndim == 0 else summed

    out = {k: total([r[k] for r in host]) for k in host[0] if k != MEMBER_SUMS}
    if MEMBER_SUMS in host[0]:
        out[MEMBER_SUMS] = {k: total([r[MEMBER_SUMS][k] for r in host]) for k in host[0][MEMBER_SUMS]}
    return out
