"""Setting a training up: what a run is given (:class:`TrainingJob`), what is built from it
before the first step (:class:`Prepared`: devices, optimiser, initial state, loss terms,
jitted steps, history columns) and the run's ``model.json`` (:func:`model_info`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..batch import GraphBatch, as_batch
from ..ensemble import ENSEMBLE_KEY, stack_members
from ..errors import ConfigError
from ..units import CANONICAL
from .config import Config
from .bootstrap import SampleWeights
from .finetune import aligned_start, frozen_labels, source_metadata, start_variables
from .history import COST_COLUMNS, RunLog
from .loaders import Batch, Loader, first_batch, loader_seed
from .losses import (
    PENALTIES,
    TERMS,
    available_terms,
    batch_sums,
    metric_columns,
    model_inputs,
    prepare_batch,
    reference_table,
)
from .loop_state import json_ready
from .optim import make_optimizer
from .parallel import DataParallel
from .schedule import Schedule
from .state import init_state, make_eval_step, make_forward, make_train_step

#: ``on_step(epoch, batches_done)``: called after each train step
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainingJob:
    """What one training is given (the arguments of :func:`~mmlwf.training.train`, resolved).

    ``model``: a flax module; ``forward(params, batch)``: its outputs (energies and forces,
    or an ``esp``); ``element_energies``: ``{Z: eV}`` subtracted from the energy targets
    (None for a model without an energy output); ``metadata``: extra entries of
    ``model.json``; ``on_step``: see :data:`StepCallback`; ``clock``: seconds (monotonic) for
    the time limit and a time budget's schedule (tests give a fake one); ``init_stats``: the
    training statistics (``stats.json``) a new run's fresh parameters are set from by the model
    kind's ``init_from_stats`` (None: the model's own initialisation; a fine-tuning run's
    statistics set the rows of elements new to its source, :mod:`.finetune`).
    """

    run_dir: Path
    model: Any
    config: Config
    train_loader: Loader
    valid_loader: Loader | None
    element_energies: Mapping | None
    forward: Callable
    metadata: Mapping | None = None
    on_step: StepCallback | None = None
    clock: Callable[[], float] = time.monotonic
    init_stats: Mapping | None = None

    @classmethod
    def make(cls, run_dir: str | os.PathLike, model: Any, config: Config, train_loader: Loader,
             valid_loader: Loader | None, element_energies: Mapping | None, forward: Callable | None = None,
             metadata: Mapping | None = None, on_step: StepCallback | None = None,
             clock: Callable[[], float] | None = None, init_stats: Mapping | None = None) -> TrainingJob:
        """A job; ``model`` may be a ``build_model(model_config)`` callable (built from
        ``config.model``), ``forward`` None (the model kind's own, with the training settings it takes, e.g.
        DCMNet's ``esp_decay_length``: :func:`~.state.make_forward`)."""
        if not (hasattr(model, "init") and hasattr(model, "apply")):  # a build_model(config) callable
            model = model(dict(config.model))
        metadata = source_metadata(config, Path(run_dir), metadata)  # fine-tuning: where it starts from
        return cls(Path(run_dir), model, config, train_loader, valid_loader, element_energies,
                   forward or make_forward(model, config.training), metadata, on_step, clock or time.monotonic,
                   init_stats)


@dataclass
class Prepared:
    """What :func:`prepare` builds before the first step.

    ``parallel``: the data-parallel set-up (None: one device); ``steps_per_epoch``: train
    steps of epoch 0; ``schedule``: the learning-rate schedule (its span, the host side:
    :class:`~.schedule.Schedule`); ``rng``: the run's PRNG key after the initialisation's; ``outputs``: the model's
    outputs; ``table``: the reference energies by Z (None without an energy output);
    ``terms``/``valid_terms``: the loss terms the training/validation data and model have;
    ``weights``: the terms trained on and their weights; ``state``: the fresh train state
    (replicated with ``parallel``); ``columns``: of ``history.csv``; ``n_parameters``: of the model;
    ``init_note``: how parameters were set from the training statistics (None: not at all);
    ``sample_weights``: a bootstrapped ensemble's member weights (None: every member sees every batch whole).
    """

    parallel: DataParallel | None
    steps_per_epoch: int
    updates_per_epoch: int
    schedule: Schedule
    rng: Any
    outputs: set[str]
    table: np.ndarray | None
    terms: tuple[str, ...]
    valid_terms: tuple[str, ...]
    weights: dict[str, float]
    state: dict
    train_step: Callable
    eval_step: Callable
    columns: list[str]
    n_parameters: int
    init_note: str | None = None
    sample_weights: SampleWeights | None = None

    def train_batch(self, batch: Batch) -> GraphBatch:
        """The device batch of a training loader batch (with its members' sample weights)."""
        prepared = prepare_batch(batch, self.table)
        if self.sample_weights is None:
            return prepared
        return prepared._replace(sample_weight=self.sample_weights.of(as_batch(batch)))

    @property
    def n_devices(self) -> int:
        return 1 if self.parallel is None else self.parallel.n


def data_parallel(setting: str) -> DataParallel | None:
    """The :class:`DataParallel` over the local devices for ``training.data_parallel``, or
    None (one device: the plain single-device step). Several processes (:mod:`.distributed`):
    always, over every process's devices (``data_parallel: off`` is ignored there)."""
    import jax

    if jax.process_count() > 1:
        return DataParallel(jax.devices())
    devices = jax.local_devices()
    if setting == "off" or len(devices) < 2:
        return None
    return DataParallel(devices)


def count_parameters(variables: Any) -> int:
    """Number of parameters (array elements) in a model's variables (what a checkpoint's
    ``params`` holds)."""
    import jax

    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(variables)))


def prepare(job: TrainingJob, log: RunLog, stored: Mapping | None = None) -> Prepared:
    """Devices, optimiser, initial state, loss terms and jitted steps of ``job`` (notes to ``log``).
    ``stored``: the meta of the checkpoint the run resumes (its schedule's span), None for a new run.

    ConfigError for an empty training loader, a model with neither energy nor ESP output, or
    no loss term left with a positive weight.
    """
    import jax

    cfg = job.config.training
    n_batches = len(job.train_loader)
    if n_batches == 0:
        raise ConfigError("the training loader yields no batches (empty training split?)")
    parallel = data_parallel(cfg.data_parallel)
    if parallel is not None:
        n_batches = parallel.steps_per_epoch(job.train_loader)  # steps, not batches
    updates_per_epoch = max(n_batches // cfg.accumulate, 1)
    schedule = Schedule(cfg, updates_per_epoch, n_batches, stored)
    tx = make_optimizer(cfg, updates_per_epoch, schedule.span(), frozen_labels(job.model, job.config))

    raw_first = first_batch(job.train_loader)
    first = prepare_batch(raw_first, None)
    members = job.config.members
    init = jax.jit(job.model.init)
    stacked = []
    for k in range(members):  # member k starts as a single run with seed + k would
        init_key, key_k = jax.random.split(jax.random.PRNGKey(cfg.seed + k))
        variables, init_note = init_from_stats(job.model, init(init_key, *model_inputs(first)), job.init_stats)
        stacked.append(variables)
        if k == 0:
            rng = key_k
    if stored is None and job.config.finetune.init_from is not None:  # a new fine-tuning run
        stacked, init_note = start_variables(job.model, job.config, job.element_energies, stacked)
    variables = stacked[0]  # one member's: shapes, outputs, the parameter count
    out = jax.eval_shape(job.forward, variables, first)
    if "energy" not in out and "esp" not in out:
        raise ConfigError("the model's output has neither 'energy' nor 'esp'")
    # element energies are needed only for an energy target (not for an ESP-only model)
    table = reference_table(job.element_energies) if "energy" in out else None
    first = prepare_batch(raw_first, table)
    if stored is None and job.config.finetune.init_from is not None and table is not None:
        stacked, init_note = aligned_start(job, stacked, table, init_note)  # another level of theory
        variables = stacked[0]

    def sums_of(p, b):
        return batch_sums(job.forward(p, b), b)

    sum_shapes = jax.eval_shape(sums_of, variables, first)
    terms = available_terms(sum_shapes)
    wanted = {t: getattr(cfg, f"{t}_weight") for t in TERMS}
    weights = {t: w for t, w in wanted.items() if t in terms and w > 0}
    skipped = [t for t, w in wanted.items() if w > 0 and t not in terms]
    if not weights:
        raise ConfigError("no loss term is left: every available term (" + ", ".join(terms) +
                          ") has weight 0")
    weights.update({t: getattr(cfg, w) for t, w in PENALTIES.items()
                    if f"{t}_loss_sse" in sum_shapes and getattr(cfg, w) > 0})
    weights.update(shallow_weights(job, sum_shapes))
    if job.config.shallow:  # per-member columns and early stopping apply to full ensembles only
        loss = f"mse + nll x{weights['nll']:g}" if "nll" in weights else "mse"
        log.line(f"shallow ensemble: {job.config.ensemble_size} output heads on one parameter set (loss {loss}); "
                 "one best epoch and early stopping for all heads, no per-member validation columns", terminal=False)
    if job.metadata and job.metadata.get("physics"):
        log.line(str(job.metadata["physics"]))  # how the model's "auto" physics switches were resolved
    seed = loader_seed(job.train_loader, cfg.seed)
    if seed != cfg.seed:
        log.line(f"note: the training loader's seed ({seed}) is not training.seed ({cfg.seed})")
    if skipped:
        log.line(f"loss terms without data or model output, skipped: {', '.join(skipped)}",
                 terminal=False)  # every default run has some: train.log only
    valid_terms = terms
    if job.valid_loader is not None:
        vfirst = prepare_batch(first_batch(job.valid_loader), table)
        valid_terms = available_terms(jax.eval_shape(sums_of, variables, vfirst))
    state = init_state(variables if members == 1 else stack_members(stacked), tx, cfg.ema_decay > 0, members)
    if parallel is not None:
        state = parallel.replicate(state)
    columns = (["epoch", "step", "train_loss"] + metric_columns(terms, "train")
               + (["valid_loss"] + metric_columns(valid_terms, "valid") if job.valid_loader is not None else [])
               + (member_columns(members) if job.valid_loader is not None and members > 1 else [])
               + ["learning_rate", "train_grad_norm", "wall_time_s", *COST_COLUMNS])
    return Prepared(
        parallel=parallel,
        steps_per_epoch=n_batches,
        updates_per_epoch=updates_per_epoch,
        schedule=schedule,
        rng=rng,
        outputs=set(out),
        table=table,
        terms=terms,
        valid_terms=valid_terms,
        weights=weights,
        state=state,
        train_step=make_train_step(job.forward, tx, weights, cfg.energy_loss, cfg.ema_decay, parallel, members),
        eval_step=make_eval_step(job.forward, parallel, members),
        columns=columns,
        n_parameters=count_parameters(variables),
        init_note=init_note,
        sample_weights=(SampleWeights.of_loader(job.train_loader, members, cfg.seed)
                        if job.config.ensemble.bootstrap else None),
    )


def shallow_weights(job: TrainingJob, sum_shapes: Mapping) -> dict[str, float]:
    """``{"nll": ensemble.nll_weight}`` for a shallow ensemble trained with ``loss: nll`` (the
    energy NLL of its heads, :func:`~.losses.batch_sums`), else none. ConfigError when the
    model's output heads are not ``ensemble.size`` (a model built by hand for the config)."""
    ens = job.config.ensemble
    heads = getattr(job.model, "output_heads", 1)
    if heads != (job.config.ensemble_size if job.config.shallow else 1):
        raise ConfigError(f"the model has {heads} output head(s) but the config's ensemble is "
                          f"{ens.kind} of size {ens.size} (build the model from config.model)")
    use = job.config.shallow and ens.loss == "nll" and ens.nll_weight > 0 and "nll_loss_sse" in sum_shapes
    return {"nll": float(ens.nll_weight)} if use else {}


def member_columns(members: int) -> list[str]:
    """The ``history.csv`` columns of an ensemble's members: each member's validation loss
    (``valid_loss`` is the ensemble's, of the member mean)."""
    return [f"valid_loss_m{k}" for k in range(members)]


def init_from_stats(model: Any, variables: Any, stats: Mapping | None) -> tuple[Any, str | None]:
    """``(variables, note)``: fresh ``variables`` set from the training statistics by the model's
    kind (:meth:`~mmlwf.models.registry.ModelKind.init_from_stats`); unchanged (note None)
    without ``stats`` or for a model of no registered kind. A resumed run's checkpoint
    replaces these parameters: only a new run starts from them."""
    from ..models.registry import kind_of_model

    kind = None if stats is None else kind_of_model(model)
    return (variables, None) if kind is None else kind.init_from_stats(model, variables, stats)


def model_info(config: Config, element_energies: Mapping | None, outputs, metadata: Mapping | None,
               n_parameters: int | None = None, init_note: str | None = None, model: Any = None) -> dict:
    """The content of ``model.json``: enough to rebuild the model and use it.

    ``model``: the flax module trained; when a registered kind made it, ``model.json`` records
    every setting of it (the kind's ``model_config``: defaults filled in, so that the record
    keeps its meaning when a default changes), else ``config.model`` as given. ``n_parameters``: the model's parameter count (recorded so that reading a run's size
    needs no checkpoint and no JAX); ``init_note``: how the run's first parameters were set
    from the training statistics (``initialised_from_stats``); each omitted when None.
    """
    from ase.data import chemical_symbols

    from ..models.registry import kind_of_model

    kind = None if model is None else kind_of_model(model)
    by_z = {str(int(z)): float(e) for z, e in sorted(dict(element_energies or {}).items(), key=lambda kv: int(kv[0]))}
    info = {
        "format": "mmlwf-model",
        "format_version": 1,
        "mmlwf_version": __version__,
        "model": dict(config.model) if kind is None else {**dict(config.model), **kind.model_config(model)},
        "units": {k: CANONICAL[k] for k in ("length", "energy", "force", "charge", "dipole", "esp")},
        "energy_reference": "model energy + sum of element_energies of the atoms",
        "element_energies_by_Z": by_z,
        "element_energies": {chemical_symbols[int(z)]: e for z, e in by_z.items()},
        "outputs": sorted(outputs),
        "ema": config.training.ema_decay > 0,
        "params": "checkpoints/best (ema_params when ema is true, else params)",
    }
    if n_parameters is not None:
        info["n_parameters"] = int(n_parameters)  # of one member for an ensemble
    if config.shallow:  # one parameter set (seed training.seed) with output heads
        info[ENSEMBLE_KEY] = {"size": config.ensemble_size, "kind": "shallow", "loss": config.ensemble.loss}
    elif config.members > 1:
        info[ENSEMBLE_KEY] = {"size": config.members, "kind": config.ensemble.kind,
                              "bootstrap": config.ensemble.bootstrap,
                              "member_seeds": [config.training.seed + k for k in range(config.members)]}
    if init_note is not None:
        info["initialised_from_stats"] = init_note
    if metadata:
        info["metadata"] = dict(metadata)
    return json_ready(info)
