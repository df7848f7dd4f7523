"""The training loop: :func:`train` (DESIGN §7, run directory §10).

Run directory::

    config.yaml      the resolved config            model.json   model config, units, element energies
    checkpoints/     latest/ (resume), best/        history.csv  one row per epoch (metrics, cost)
    train.log        a line per epoch and the run's notes (the terminal: :mod:`.progress`)

Resume: calling :func:`train` again on the same directory continues from ``latest``:
parameters, optimiser state (accumulated gradients included), EMA, counters, RNG key,
plateau state, early-stopping state and the history are restored, and the data order is a
function of ``(seed, epoch)``; a checkpoint taken within an epoch (SIGTERM, time limit)
records how many of that epoch's batches were done and the run continues with the next
one. The result equals an uninterrupted run (bitwise on CPU).

Stops: ``max_epochs`` ("completed"), early stopping ("early_stopped"), ``max_time_min``
of this invocation ("time_limit"), SIGTERM or SIGINT ("interrupted": the current step is
finished and a ``latest`` checkpoint written; a second SIGINT aborts at once). A non-finite
loss or gradient raises :class:`TrainingDiverged` naming the epoch, step and structures of
the batch; the state of the bad step is not kept and no checkpoint is written, so the
last good one stays. Exit codes for a CLI: :data:`EXIT_CODES`. A run that fails before its
first checkpoint removes what it created (:mod:`.rundir`): nothing to resume, nothing to
mistake for a result.

Devices: with one device a step is one batch. With ``training.data_parallel: auto`` and
``n > 1`` local devices a step takes up to ``n`` consecutive batches of one shape, one per
device, and equals one step on a batch holding all their molecules (:mod:`.parallel`: what a
step, the step counters and the schedule mean then). Checkpoints are written from the first
device and read back on any number of devices.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, TrainingDiverged
from ..fileio import atomic_write, writing
from ..units import CANONICAL
from .checkpoint import CheckpointStore
from .config import Config, config_changes
from .history import COST_COLUMNS, RunLog, count_batch, epoch_cost, format_metrics, write_history
from .losses import (
    TERMS,
    available_terms,
    batch_sums,
    loss_from_sums,
    metric_columns,
    metrics_from_sums,
    model_inputs,
    prepare_batch,
    reference_table,
)
from .monitor import CompileCounter, cache_size
from .optim import Plateau, make_optimizer, schedule_fn
from .parallel import DataParallel
from .progress import TrainingProgress, summary_line
from .rundir import entries_before, remove_fresh_run
from .state import init_state, make_eval_step, make_forward, make_train_step

#: process exit codes for the statuses :func:`train` returns; "interrupted" (SIGTERM/SIGINT,
#: checkpoint written, run again to resume) is EX_TEMPFAIL so that a workflow manager treats
#: the job as unfinished and re-runs (= resumes) it.
EXIT_INTERRUPTED = 75
EXIT_CODES = {"completed": 0, "early_stopped": 0, "time_limit": 0, "interrupted": EXIT_INTERRUPTED}
META_VERSION = 1


# ----------------------------------------------------------------------------- signals


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop stops after the step in progress."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def _signal_handlers(flag: _StopFlag) -> Iterator[None]:
    """Install the graceful-stop handlers for the duration of train() (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- helpers


def _epoch_batches(loader, epoch: int, start: int) -> tuple[int, Iterator[dict]]:
    """(number of batches of ``epoch``, iterator over them from batch ``start``)."""
    if hasattr(loader, "plan") and hasattr(loader, "assemble"):
        specs = loader.plan(epoch)
        if start == 0:
            return len(specs), loader.epoch(epoch)
        return len(specs), (loader.assemble(*spec) for spec in specs[start:])
    batches = list(loader.epoch(epoch))  # a plain loader: no cheap way to skip
    return len(batches), iter(batches[start:])


def _first_batch(loader) -> dict:
    if hasattr(loader, "plan") and hasattr(loader, "assemble"):
        return loader.assemble(*loader.plan(0)[0])
    return next(iter(loader.epoch(0)))


def _json_ready(obj):
    return json.loads(json.dumps(obj))


def _write_json(path: Path, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def evaluate_sums(eval_step, params, loader, table: np.ndarray, parallel: DataParallel | None = None
                  ) -> dict[str, float] | None:
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


def model_info(config: Config, element_energies: Mapping, outputs, metadata: Mapping | None) -> dict:
    """The content of ``model.json``: enough to rebuild the model and use it."""
    from ase.data import chemical_symbols

    by_z = {str(int(z)): float(e) for z, e in sorted(dict(element_energies or {}).items(), key=lambda kv: int(kv[0]))}
    info = {
        "format": "mmlwf-model",
        "format_version": 1,
        "mmlwf_version": __version__,
        "model": dict(config.model),
        "units": {k: CANONICAL[k] for k in ("length", "energy", "force", "charge", "dipole", "esp")},
        "energy_reference": "model energy + sum of element_energies of the atoms",
        "element_energies_by_Z": by_z,
        "element_energies": {chemical_symbols[int(z)]: e for z, e in by_z.items()},
        "outputs": sorted(outputs),
        "ema": config.training.ema_decay > 0,
        "params": "checkpoints/best (ema_params when ema is true, else params)",
    }
    if metadata:
        info["metadata"] = dict(metadata)
    return _json_ready(info)


def data_parallel(setting: str) -> DataParallel | None:
    """The :class:`DataParallel` over the local devices for ``training.data_parallel``, or
    None (one device: the plain single-device step)."""
    import jax

    devices = jax.local_devices()
    if setting == "off" or len(devices) < 2:
        return None
    return DataParallel(devices)


def exit_code(summary: Mapping) -> int:
    """The process exit code for a :func:`train` summary (see :data:`EXIT_CODES`)."""
    return EXIT_CODES.get(summary.get("status"), 1)


# ----------------------------------------------------------------------------- train


def train(
    run_dir: str | os.PathLike,
    *,
    model,
    config: Config,
    train_loader,
    valid_loader,
    element_energies: Mapping | None,
    forward: Callable | None = None,
    metadata: Mapping | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
    verbose: bool = False,
    summary_every: float | None = None,
) -> dict:
    """Train ``model`` in ``run_dir`` (or resume the run there) and return a summary.

    ``model``: a flax module with the PhysNet call signature, or a ``build_model(model_config)``
    callable that makes one from ``config.model``. ``config``: a
    :class:`~mmlwf.training.config.Config` (its ``model`` section is recorded in ``model.json``). ``train_loader`` /
    ``valid_loader``: :class:`~mmlwf.batching.BatchLoader` s (``valid_loader`` may be None:
    then the best checkpoint and early stopping follow the training loss).
    ``element_energies``: ``{Z: eV}`` (e.g. ``load_stats(...)["element_energies_by_Z"]``),
    subtracted from the energy targets on the host in float64 (unused, may be None, for a
    model without an ``energy`` output such as DCMNet). ``forward(params, batch)``: the
    model's outputs, energies and forces or an ``esp`` (default: autodiff forces of
    ``model.apply``; a registered kind's own, e.g. :func:`~mmlwf.models.dcmnet.forward` with
    ``esp_decay_length``). ``metadata``: extra
    entries for ``model.json``. ``progress``: tqdm bar (default: when stderr is a terminal).
    ``verbose``: every epoch's line in the terminal, not only a summary line every
    ``summary_every`` seconds (None: the default of :mod:`.progress`).
    ``on_step(epoch, batches_done)``: called after each step (epoch counted from 0; loader
    batches done of the epoch: one more per step on one device, up to ``n`` with ``n``).

    Returns ``{"status", "exit_code", "epochs", "steps", "best_epoch", "best_loss",
    "last" (the last history row), "compilations", "train_step_shapes", "eval_step_shapes",
    "devices", "wall_time_s", "run_dir"}`` (``steps``: train steps; ``devices``: how many
    devices each step ran on).
    """
    run_dir = Path(run_dir)
    before = entries_before(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    runlog = None
    store = None
    stop = _StopFlag()
    try:
        runlog = RunLog(run_dir / "train.log", TrainingProgress(progress, verbose=verbose, summary_every=summary_every))
        store = CheckpointStore(run_dir / "checkpoints")
        with _signal_handlers(stop):
            return _Run(run_dir, model, config, train_loader, valid_loader, element_energies,
                        forward, metadata, runlog, store, stop, on_step).run()
    except BaseException as exc:
        if runlog is not None:
            runlog.note(f"stopped: {exc}" if isinstance(exc, TrainingDiverged)
                        else f"error: {type(exc).__name__}: {exc}")
        if store is None or store.empty():  # failed before its first checkpoint: leave nothing
            _close(runlog, store)
            runlog = store = None
            remove_fresh_run(run_dir, before)
        raise
    finally:
        _close(runlog, store)


def _close(runlog: RunLog | None, store: CheckpointStore | None) -> None:
    if runlog is not None:
        runlog.close()
    if store is not None:
        store.close()


class _Run:
    """One invocation of :func:`train` (set-up, resume, the epoch loop)."""

    def __init__(self, run_dir, model, config, train_loader, valid_loader, element_energies,
                 forward, metadata, runlog, store, stop, on_step) -> None:
        self.run_dir = run_dir
        if not (hasattr(model, "init") and hasattr(model, "apply")):  # a build_model(config) callable
            model = model(dict(config.model))
        self.model = model
        self.config = config
        self.cfg = config.training
        self.train_loader = train_loader
        self.valid_loader = valid_loader
        self.element_energies = element_energies
        self.forward = forward or make_forward(model, config.training)
        self.metadata = metadata
        self.log = runlog
        self.store = store
        self.stop = stop
        self.on_step = on_step
        self.compiles = CompileCounter()
        self.t0 = time.monotonic()

    # -- set-up
    def setup(self) -> None:
        import jax

        cfg = self.cfg
        n_batches = len(self.train_loader)
        if n_batches == 0:
            raise ConfigError("the training loader yields no batches (empty training split?)")
        self.parallel = data_parallel(cfg.data_parallel)
        self.n_devices = 1 if self.parallel is None else self.parallel.n
        if self.parallel is not None:
            n_batches = self.parallel.steps_per_epoch(self.train_loader)  # steps, not batches
        self.steps_per_epoch = n_batches
        self.updates_per_epoch = max(n_batches // cfg.accumulate, 1)
        self.tx = make_optimizer(cfg, self.updates_per_epoch)
        self.lr_host = schedule_fn(cfg, self.updates_per_epoch, np)

        raw_first = _first_batch(self.train_loader)
        first = prepare_batch(raw_first, None)
        key = jax.random.PRNGKey(cfg.seed)
        init_key, self.rng = jax.random.split(key)
        variables = jax.jit(self.model.init)(init_key, *model_inputs(first))
        out = jax.eval_shape(self.forward, variables, first)
        if "energy" not in out and "esp" not in out:
            raise ConfigError("the model's output has neither 'energy' nor 'esp'")
        self.outputs = set(out)
        # element energies are needed only for an energy target (not for an ESP-only model)
        self.table = reference_table(self.element_energies) if "energy" in out else None
        first = prepare_batch(raw_first, self.table)

        def sums_of(p, b):
            return batch_sums(self.forward(p, b), b)

        self.terms = available_terms(jax.eval_shape(sums_of, variables, first))
        wanted = {t: getattr(cfg, f"{t}_weight") for t in TERMS}
        self.weights = {t: w for t, w in wanted.items() if t in self.terms and w > 0}
        skipped = [t for t, w in wanted.items() if w > 0 and t not in self.terms]
        if not self.weights:
            raise ConfigError("no loss term is left: every available term (" + ", ".join(self.terms) +
                              ") has weight 0")
        loader_seed = getattr(self.train_loader, "seed", cfg.seed)
        if loader_seed != cfg.seed:
            self.log.line(f"note: the training loader's seed ({loader_seed}) is not training.seed ({cfg.seed})")
        if skipped:
            self.log.line(f"loss terms without data or model output, skipped: {', '.join(skipped)}",
                          terminal=False)  # every default run has some: train.log only
        self.valid_terms = self.terms
        if self.valid_loader is not None:
            vfirst = prepare_batch(_first_batch(self.valid_loader), self.table)
            self.valid_terms = available_terms(jax.eval_shape(sums_of, variables, vfirst))
        self.state = init_state(variables, self.tx, cfg.ema_decay > 0)
        if self.parallel is not None:
            self.state = self.parallel.replicate(self.state)
        self.train_step = make_train_step(self.forward, self.tx, self.weights,
                                          cfg.energy_loss == "per_atom", cfg.ema_decay, self.parallel)
        self.eval_step = make_eval_step(self.forward, self.parallel)
        self.columns = (["epoch", "step", "train_loss"] + metric_columns(self.terms, "train")
                        + (["valid_loss"] + metric_columns(self.valid_terms, "valid")
                           if self.valid_loader is not None else [])
                        + ["learning_rate", "wall_time_s", *COST_COLUMNS])

    def fresh_meta(self) -> dict:
        return {
            "meta_version": META_VERSION,
            "status": "running",
            "epoch": 0,  # epochs completed (= the loader epoch in progress)
            "batch": 0,  # loader batches done of the epoch in progress (its plan position)
            "step": 0,  # train steps done in all (optimiser updates = step // accumulate); a
            # step is one batch on one device, up to `devices` batches with data parallelism
            "devices": self.n_devices,
            "acc": self.empty_acc(),
            "wall_time_s": 0.0,
            "best_loss": None,
            "best_epoch": None,
            "plateau": Plateau().to_dict(),
            "rng": np.asarray(self.rng).tolist(),  # carried for models that draw random numbers
            "history": [],
            "config": _json_ready(self.config.to_dict()),
        }

    @staticmethod
    def empty_acc() -> dict:
        return {"loss_sum": 0.0, "n": 0, "sums": {}}  # + the cost sums of history.count_batch

    def resume(self) -> None:
        import jax

        got = self.store.restore_latest(self.state)
        if got is None:
            self.meta = self.fresh_meta()
            self.store.prune_best(None)  # from a run killed before its first 'latest'
            self.log.line(f"new run in {self.run_dir} (mmlwf {__version__}, jax {jax.__version__}, "
                          f"devices: {', '.join(str(d) for d in jax.devices())})")
            return
        state, meta = got
        changes = config_changes(meta.get("config", {}), _json_ready(self.config.to_dict()))
        if changes:
            raise ConfigError(f"{self.run_dir} holds a run with another config ({changes[0]}); "
                              "use a new run directory or the same settings")
        self.state = state if self.parallel is None else self.parallel.replicate(state)
        meta["config"] = _json_ready(self.config.to_dict())
        was = int(meta.get("devices", 1))
        if was != self.n_devices:
            self.log.line(f"note: the checkpoint's steps ran on {was} device(s), this run's on {self.n_devices}: "
                          "the rest of the run groups batches into steps differently (see "
                          "training.data_parallel), so it is not the uninterrupted run's continuation")
        meta["devices"] = self.n_devices
        self.meta = meta
        self.rng = jax.numpy.asarray(np.asarray(meta["rng"], np.uint32))
        self.store.prune_best(meta["best_epoch"])  # best checkpoints after 'latest' are redone
        self.log.line(f"resumed from checkpoint {self.store.latest_step()}: epoch {meta['epoch']} "
                      f"+ {meta['batch']} batches, step {meta['step']} (status was {meta['status']})")

    # -- bookkeeping
    def wall(self) -> float:
        return self.meta_wall0 + (time.monotonic() - self.t0)

    def saveable(self, tree):
        """``tree`` as written to a checkpoint (from the first device with data parallelism)."""
        return tree if self.parallel is None else self.parallel.to_one_device(tree)

    def save_latest(self, status: str) -> None:
        self.meta["status"] = status
        self.meta["wall_time_s"] = self.wall()
        self.store.save_latest(self.saveable(self.state), self.meta)
        self.store.prune_best(self.meta["best_epoch"])

    def check(self, pending) -> None:
        """Fetch a step's metrics; stop on a non-finite loss; add them to the epoch sums."""
        import jax

        epoch, batch_no, step, members, m = pending
        host = jax.device_get(m)
        if not bool(host["ok"]):
            what = f"loss={float(host['loss'])!r}, gradient norm={float(host['grad_norm'])!r}"
            held = [([int(i) for i in np.asarray(index) if i >= 0], int(dataset)) for index, dataset in members]
            if len(held) == 1:
                idx, dataset = held[0]
                where = (f"step {batch_no} of the epoch (global step {step}); the batch holds structures {idx} "
                         f"of dataset {dataset}")
            else:
                where = (f"batches {batch_no - len(held) + 1}-{batch_no} of the epoch (global step {step}, "
                         f"{self.n_devices} devices); the batches hold structures "
                         + ", ".join(f"{idx} of dataset {dataset}" for idx, dataset in held))
            raise TrainingDiverged(
                f"non-finite loss or gradient ({what}) at epoch {epoch + 1}, {where}; "
                f"no checkpoint written after it, the last good one is kept")
        acc = self.meta["acc"]
        acc["loss_sum"] += float(host["loss"])
        acc["n"] += 1
        for k, v in host.items():
            if k not in ("loss", "ok", "grad_norm"):
                acc["sums"][k] = acc["sums"].get(k, 0.0) + float(np.float64(v))

    def done_reason(self) -> str | None:
        m, cfg = self.meta, self.cfg
        if m["batch"] == 0 and m["epoch"] >= cfg.max_epochs:
            return "completed"
        if (m["batch"] == 0 and cfg.early_stopping_patience is not None and m["best_epoch"] is not None
                and m["epoch"] - m["best_epoch"] >= cfg.early_stopping_patience):
            return "early_stopped"
        return None

    def learning_rate(self) -> float:
        updates = self.meta["step"] // self.cfg.accumulate
        factor = self.meta["plateau"]["factor"]
        return float(self.lr_host(max(updates - 1, 0))) * factor

    def summary(self, status: str) -> dict:
        hist = self.meta["history"]
        return {
            "status": status,
            "exit_code": EXIT_CODES[status],
            "epochs": self.meta["epoch"],
            "steps": self.meta["step"],
            "best_epoch": self.meta["best_epoch"],
            "best_loss": self.meta["best_loss"],
            "last": dict(hist[-1]) if hist else None,
            "compilations": self.compiles.count,
            "train_step_shapes": cache_size(self.train_step),
            "eval_step_shapes": cache_size(self.eval_step),
            "devices": self.n_devices,
            "wall_time_s": self.wall(),
            "run_dir": str(self.run_dir),
        }

    def compile_note(self) -> str:
        return (f"XLA compilations: {self.compiles.count} (train step: {cache_size(self.train_step)} shapes, "
                f"eval step: {cache_size(self.eval_step)} shapes)")

    # -- the loop
    def run(self) -> dict:
        self.setup()
        self.resume()
        self.meta_wall0 = float(self.meta["wall_time_s"])
        _write_json(self.run_dir / "model.json",
                    model_info(self.config, self.element_energies, self.outputs, self.metadata))
        with atomic_write(self.run_dir / "config.yaml") as fh:
            fh.write(self.config.to_yaml())
        write_history(self.run_dir / "history.csv", self.meta["history"], self.columns)
        cfg = self.cfg
        self.log.line(f"training: {len(self.train_loader)} batches per epoch, loss terms "
                      f"{', '.join(f'{t}*{w:g}' for t, w in self.weights.items())}, optimizer {cfg.optimizer}, "
                      f"schedule {cfg.schedule}, accumulate {cfg.accumulate}, ema {cfg.ema_decay:g}")
        if self.parallel is not None:
            self.log.line(f"data parallel over {self.parallel.describe()}: {self.steps_per_epoch} steps in "
                          f"epoch 1, each on up to {self.parallel.n} batches (one per device)")
        reason = self.done_reason()
        if reason is not None:
            self.log.line(f"nothing to do: the run is {reason} at epoch {self.meta['epoch']}")
            return self.summary(reason)
        deadline = None if cfg.max_time_min is None else self.t0 + 60.0 * cfg.max_time_min
        while True:
            status = self.run_epoch(deadline)
            if status is not None:
                break
        extra = f" (+{self.meta['batch']} batches)" if self.meta["batch"] else ""
        self.log.line(f"{status} after epoch {self.meta['epoch']}{extra}, "
                      f"step {self.meta['step']}; best epoch {self.meta['best_epoch']}; {self.compile_note()}")
        return self.summary(status)

    def steps(self, batches: Iterator[dict]) -> Iterator[tuple[list[dict], dict]]:
        """``(loader batches, device batch)`` of each step: one batch, or a group of up to
        ``n`` stacked over the devices."""
        if self.parallel is None:
            for batch in batches:
                yield [batch], prepare_batch(batch, self.table)
            return
        for group in self.parallel.groups(batches):
            yield group, self.parallel.stack([prepare_batch(b, self.table) for b in group])

    def run_epoch(self, deadline: float | None) -> str | None:
        """Train (the rest of) one epoch and finish it; a status when the run stops."""
        m, cfg = self.meta, self.cfg
        epoch = m["epoch"]
        n, batches = _epoch_batches(self.train_loader, epoch, m["batch"])
        factor = np.float32(m["plateau"]["factor"])
        bar = self.log.progress
        bar.start_epoch(epoch, cfg.max_epochs, n, m["batch"])
        last_valid = next((r["valid_loss"] for r in reversed(m["history"]) if r.get("valid_loss") is not None), None)
        acc = m["acc"]
        pending = None
        interrupted = None
        t_loop = time.perf_counter()
        try:
            for group, dev in self.steps(batches):
                for b in group:
                    count_batch(acc, b)
                self.state, metrics = self.train_step(self.state, dev, factor)
                if pending is not None:
                    self.check(pending)  # the previous step, while this one runs
                m["batch"] += len(group)
                m["step"] += 1
                pending = (epoch, m["batch"], m["step"], [(b["index"], b.get("dataset", 0)) for b in group],
                           metrics)
                bar.advance(len(group), acc["loss_sum"] / acc["n"] if acc["n"] else None, last_valid)
                if self.on_step is not None:
                    self.on_step(epoch, m["batch"])
                if self.stop.signum is not None:
                    interrupted = "interrupted"
                elif deadline is not None and time.monotonic() > deadline:
                    interrupted = "time_limit"
                if interrupted:
                    break
            if pending is not None:
                self.check(pending)
        finally:
            acc["train_s"] = acc.get("train_s", 0.0) + (time.perf_counter() - t_loop)
        if interrupted:
            why = self.stop.name if interrupted == "interrupted" else f"max_time_min={cfg.max_time_min:g}"
            self.save_latest(interrupted)
            self.log.line(f"{why}: stopped in epoch {epoch + 1} after {m['batch']}/{n} batches; "
                          f"checkpoint written, run again to resume")
            return interrupted
        return self.finish_epoch(deadline)

    def finish_epoch(self, deadline: float | None) -> str | None:
        m, cfg = self.meta, self.cfg
        epoch_no = m["epoch"] + 1
        acc = m["acc"]
        row = {"epoch": epoch_no, "step": m["step"] // cfg.accumulate,
               "train_loss": acc["loss_sum"] / max(acc["n"], 1)}
        row.update(metrics_from_sums(acc["sums"], "train") if acc["n"] else {})
        monitor = row["train_loss"]
        validated = self.valid_loader is None
        if self.valid_loader is not None and (epoch_no % cfg.valid_every == 0 or epoch_no >= cfg.max_epochs):
            params = self.state["ema_params"] if self.state["ema_params"] is not None else self.state["params"]
            sums = evaluate_sums(self.eval_step, params, self.valid_loader, self.table, self.parallel)
            if sums is not None:
                row["valid_loss"] = float(loss_from_sums(sums, {t: w for t, w in self.weights.items()
                                                               if f"{t}_n" in sums},
                                                         cfg.energy_loss == "per_atom", np))
                row.update(metrics_from_sums(sums, "valid"))
                monitor = row["valid_loss"]
                validated = True
                if not np.isfinite(monitor):
                    raise TrainingDiverged(f"non-finite validation loss ({monitor!r}) after epoch {epoch_no}; "
                                           "no checkpoint written, the last good one is kept")
        row["learning_rate"] = self.learning_rate()
        improved = False
        if validated:
            if m["best_loss"] is None or monitor < m["best_loss"]:
                m["best_loss"], m["best_epoch"], improved = float(monitor), epoch_no, True
                self.store.save_best(epoch_no, self.saveable(self.state["params"]),
                                     self.saveable(self.state["ema_params"]),
                                     _json_ready({"epoch": epoch_no, "loss": monitor, "metrics": row}))
            plateau = Plateau.from_dict(m["plateau"])
            if plateau.observe(monitor, cfg):
                self.log.line(f"plateau: learning-rate factor now {plateau.factor:g}")
            m["plateau"] = plateau.to_dict()
        m["epoch"], m["batch"], m["acc"] = epoch_no, 0, self.empty_acc()
        row["wall_time_s"] = self.wall()
        row.update(epoch_cost(acc, self.compiles.count))
        m["history"].append(_json_ready(row))
        write_history(self.run_dir / "history.csv", m["history"], self.columns)
        status = self.done_reason()
        if status is None and self.stop.signum is not None:
            status = "interrupted"
        elif status is None and deadline is not None and time.monotonic() > deadline:
            status = "time_limit"
        if status is not None or epoch_no % cfg.checkpoint_every == 0:
            self.save_latest(status or "running")
        keys = ["train_loss", "valid_loss", "valid_energy_mae_eV", "valid_forces_mae_eV_per_A",
                "valid_esp_rmse_kcal_per_mol_e", "learning_rate"]
        verbose = self.log.progress.verbose
        self.log.line(f"epoch {epoch_no}/{cfg.max_epochs} {format_metrics(row, keys)} "
                      f"time={row['wall_time_s']:.1f}s compilations={self.compiles.count}"
                      + (" *best" if improved else ""), terminal=verbose)
        if not verbose and self.log.progress.summary_due(epoch_no, status is not None):
            self.log.progress.say(summary_line(row, cfg.max_epochs, m["best_epoch"], m["best_loss"]))
        if epoch_no == 1:
            self.log.line(self.compile_note(), terminal=verbose)
        return status
