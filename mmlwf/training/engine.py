"""The training loop: :func:`train` (the loop, the run directory and resume are described in
``docs/architecture.md``).

Run directory::

    config.yaml      the resolved config
    model.json       model config, units, element energies, parameter count
    checkpoints/     latest/ (resume), best/
    history.csv      one row per epoch (metrics, cost)
    train.log        a line per epoch and the run's notes (the terminal: :mod:`.progress`)

Resume: calling :func:`train` again on the same directory continues from ``latest``:
parameters, optimiser state (accumulated gradients included), EMA and the loop's host state
(:class:`~.loop_state.LoopState`: counters, RNG key, plateau state, early-stopping state and
the history) are restored, and the data order is a function of ``(seed, epoch)``; a
checkpoint taken within an epoch (SIGTERM, time limit) records how many of that epoch's
batches were done and the run continues with the next one. The result equals an
uninterrupted run (bitwise on CPU).

Checkpoints: when ``latest`` and ``best`` are written, :mod:`.cadence`.

Stops: ``max_epochs`` or the last epoch a time budget's schedule fixed (:mod:`.schedule`;
"completed"), early stopping ("early_stopped"), ``max_time_min``
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

Modules (``docs/architecture.md`` §7): :mod:`.setup`, :mod:`.loop_state`, :mod:`.cadence`,
:mod:`.step_metrics`, :mod:`.members` (an ensemble's best per member), :mod:`.loaders`, :mod:`.signals`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, TrainingDiverged
from ..fileio import atomic_write, write_json, writing
from . import distributed
from .cadence import Cadence
from .checkpoint import CheckpointStore
from .config import Config, config_changes
from .history import RunLog, count_batch, epoch_cost, format_metrics, write_history
from .tensorboard import EpochBoard
from .loaders import Loader, epoch_batches
from .loop_state import META_VERSION, EpochSums, LoopState, json_ready
from .losses import loss_from_sums, metrics_from_sums
from .members import MemberSelection, record_spread_scales
from .monitor import CompileCounter
from .parallel import step_batches
from .progress import TrainingProgress, summary_line
from ..rundir import RunDir
from .cleanup import entries_before, remove_fresh_run
from .setup import Prepared, TrainingJob, data_parallel, model_info, prepare
from .state import MEMBER_SUMS, evaluate_sums
from .signals import EXIT_CODES, EXIT_INTERRUPTED, StopFlag, exit_code, signal_handlers
from .step_metrics import PendingStep, take_step

__all__ = ["EXIT_CODES", "EXIT_INTERRUPTED", "META_VERSION", "TrainingDiverged", "data_parallel",
           "evaluate_sums", "exit_code", "model_info", "train"]


# ----------------------------------------------------------------------------- train


def train(
    run_dir: str | os.PathLike,
    *,
    model,
    config: Config,
    train_loader: Loader,
    valid_loader: Loader | None,
    element_energies: Mapping | None,
    forward: Callable | None = None,
    metadata: Mapping | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
    verbose: bool = False,
    summary_every: float | None = None,
    clock: Callable[[], float] | None = None,
    init_stats: Mapping | None = None,
) -> dict:
    """Train ``model`` in ``run_dir`` (or resume the run there) and return a summary.

    ``model``: a flax module with the PhysNet call signature, or a ``build_model(model_config)``
    callable that makes one from ``config.model``. ``config``: a
    :class:`~mmlwf.training.config.Config` (its ``model`` section is recorded in ``model.json``).
    ``train_loader`` / ``valid_loader``: :class:`~mmlwf.batching.BatchLoader` s or other
    :class:`~.loaders.Loader` s (``valid_loader`` may be None: then the best checkpoint and
    early stopping follow the training loss).
    ``element_energies``: ``{Z: eV}`` (e.g. ``load_stats(...)["element_energies_by_Z"]``),
    subtracted from the energy targets on the host in float64 (unused, may be None, for a
    model without an ``energy`` output such as DCMNet). ``forward(params, batch)``: the
    model's outputs, energies and forces or an ``esp`` (default: :func:`~.state.make_forward`).
    ``metadata``: extra entries for ``model.json``. ``progress``: tqdm bar (default: when
    stderr is a terminal). ``verbose``: every epoch's line in the terminal, not only a summary
    line every ``summary_every`` seconds (None: the default of :mod:`.progress`).
    ``on_step(epoch, batches_done)``: called after each step (epoch counted from 0; loader
    batches done of the epoch: one more per step on one device, up to ``n`` with ``n``).
    ``clock``: seconds for the time limit and a time budget's schedule (default time.monotonic).
    ``init_stats``: the statistics a new run's parameters start from (:class:`~.setup.TrainingJob`).

    Returns ``{"status", "exit_code", "epochs", "steps", "best_epoch", "best_loss",
    "last" (the last history row), "compilations", "train_step_shapes", "eval_step_shapes",
    "devices", "wall_time_s", "run_dir", "schedule"}`` (``schedule``: the record of
    :mod:`.schedule`; ``steps``: train steps; ``devices``: how many
    devices each step ran on).
    """
    run_dir = Path(run_dir)
    distributed.initialize()
    main = distributed.is_main()
    before = entries_before(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    files = run_dir if main else Path(tempfile.mkdtemp(prefix="mmlwf-process-"))  # process 0 writes the files
    runlog = None
    store = None
    stop = StopFlag()
    try:
        runlog = RunLog(RunDir(files).train_log, TrainingProgress(progress, verbose=verbose, summary_every=summary_every)
                        if main else distributed.QuietProgress())
        store = CheckpointStore(RunDir(run_dir).checkpoints)
        with signal_handlers(stop):
            job = TrainingJob.make(files, model, config, train_loader, valid_loader, element_energies,
                                   forward, metadata, on_step, clock, init_stats)
            return _Run(job, runlog, store, stop).run()
    except BaseException as exc:
        if runlog is not None:
            runlog.note(f"stopped: {exc}" if isinstance(exc, TrainingDiverged)
                        else f"error: {type(exc).__name__}: {exc}")
        if main and (store is None or store.empty()):  # failed before its first checkpoint: leave nothing
            _close(runlog, store)
            runlog = store = None
            remove_fresh_run(run_dir, before)
        raise
    finally:
        _close(runlog, store)
        if not main:
            shutil.rmtree(files, ignore_errors=True)


def _close(runlog: RunLog | None, store: CheckpointStore | None) -> None:
    if runlog is not None:
        runlog.close()
    if store is not None:
        store.close()


class _Run:
    """One invocation of :func:`train` (set-up, resume, the epoch loop)."""

    def __init__(self, job: TrainingJob, log: RunLog, store: CheckpointStore, stop: StopFlag) -> None:
        self.job = job
        self.cfg = job.config.training
        self.log = log
        self.store = store
        self.stop = stop
        self.compiles = CompileCounter()
        self.agree = distributed.Agreement(job.clock) if distributed.process_count() > 1 else None
        self.clock = job.clock if self.agree is None else self.agree.clock  # one clock for all processes
        self.t0 = self.clock()
        self.wall0 = 0.0
        self.p: Prepared  # set by run()
        self.s: LoopState  # set by resume()
        self.state: dict  # the train state arrays (params, opt_state, ema_params)
        members = job.config.members
        self.members = MemberSelection(members) if members > 1 else None  # an ensemble's best per member
        self.cadence = Cadence(store, self.cfg.checkpoint_every, self.cfg.checkpoint_interval_min, self.clock,
                               self.saveable)

    # -- set-up
    def config_json(self) -> dict:
        return json_ready(self.job.config.to_dict())

    def resume(self) -> None:
        import jax

        n_devices = self.p.n_devices
        got = self.store.restore_latest(self.state)
        if got is None:
            self.s = LoopState(config=self.config_json(), rng=np.asarray(self.p.rng).tolist(), devices=n_devices,
                               schedule=self.p.schedule.record)
            self.store.prune_best(None)  # from a run killed before its first 'latest'
            self.log.line(f"new run in {self.job.run_dir} (mmlwf {__version__}, jax {jax.__version__}, "
                          f"devices: {', '.join(str(d) for d in jax.devices())})")
            if self.init_note:  # how the parameters started (model.json too)
                self.log.line(self.init_note, terminal=False)
            return
        state, meta = got
        self.init_note = (r.info if (r := RunDir(self.job.run_dir)).is_run() else {}).get("initialised_from_stats")
        self.state = state if self.p.parallel is None else self.p.parallel.replicate(state)
        s = LoopState.from_meta(meta)
        s.config = self.config_json()
        if s.devices != n_devices:
            self.log.line(f"note: the checkpoint's steps ran on {s.devices} device(s), this run's on {n_devices}: "
                          "the rest of the run groups batches into steps differently (see "
                          "training.data_parallel), so it is not the uninterrupted run's continuation")
        s.devices = n_devices
        s.schedule = self.p.schedule.record  # one record: the one the schedule decides in
        self.s = s
        self.store.prune_best(s.best_epoch)  # best checkpoints after 'latest' are redone
        if self.members is not None:
            self.members = MemberSelection(self.job.config.members, s.extra.get(MemberSelection.META_KEY))
            self.members.resume(self.job.run_dir, self.state["ema_params"] is not None)
        self.log.line(f"resumed from checkpoint {self.store.latest_step()}: epoch {s.epoch} "
                      f"+ {s.batch} batches, step {s.step} (status was {s.status})")

    # -- bookkeeping
    def stop_requested(self) -> bool:
        """SIGTERM/SIGINT seen (by any process)."""
        seen = self.stop.signum is not None
        return seen if self.agree is None else self.agree.stopped(seen)

    def wall(self) -> float:
        return self.wall0 + (self.clock() - self.t0)

    def saveable(self, tree):
        """``tree`` as written to a checkpoint (from the first device with data parallelism)."""
        return tree if self.p.parallel is None else self.p.parallel.to_one_device(tree)

    def save_latest(self, status: str) -> None:
        """Write the pending 'best' checkpoint, then 'latest' (a kill between them leaves a
        best newer than latest: the resumed run prunes it and redoes it)."""
        self.cadence.flush_best()
        self.s.status = status
        self.s.wall_time_s = self.wall()
        self.cadence.save_latest(self.state, self.s.to_meta(), self.s.best_epoch)

    def done_reason(self) -> str | None:
        s, cfg = self.s, self.cfg
        if s.batch == 0 and s.epoch >= self.p.schedule.end_epoch():
            return "completed"
        since = s.epochs_since_best()
        if s.batch == 0 and cfg.early_stopping_patience is not None and since is not None \
                and since >= cfg.early_stopping_patience:
            return "early_stopped"
        return None

    def learning_rate(self) -> float:
        updates = self.s.step // self.cfg.accumulate
        return self.p.schedule.lr(max(updates - 1, 0)) * self.s.plateau.factor

    def summary(self, status: str) -> dict:
        hist = self.s.history
        return {
            "status": status,
            "exit_code": EXIT_CODES[status],
            "epochs": self.s.epoch,
            "steps": self.s.step,
            "best_epoch": self.s.best_epoch,
            "best_loss": self.s.best_loss,
            "last": dict(hist[-1]) if hist else None,
            "compilations": self.compiles.count,
            "train_step_shapes": self.p.train_step.shapes,
            "eval_step_shapes": self.p.eval_step.shapes,
            "devices": self.p.n_devices,
            "wall_time_s": self.wall(),
            "run_dir": str(self.job.run_dir),
            "schedule": self.s.schedule,
        }

    def compile_note(self) -> str:
        return (f"XLA compilations: {self.compiles.count} (train step: {self.p.train_step.shapes} shapes, "
                f"eval step: {self.p.eval_step.shapes} shapes)")

    # -- the loop
    def run(self) -> dict:
        job, cfg = self.job, self.cfg
        stored = self.store.restore_latest({})  # the meta only: the schedule's span, before the optimiser
        changes = [] if stored is None else config_changes(stored[1].get("config", {}), self.config_json())
        if changes:  # before the state is built: another ensemble size has other shapes
            raise ConfigError(f"{self.job.run_dir} holds a run with another config ({changes[0]}); "
                              "use a new run directory or the same settings")
        self.p = prepare(job, self.log, None if stored is None else stored[1])
        self.state, self.init_note = self.p.state, self.p.init_note
        self.resume()
        self.wall0 = float(self.s.wall_time_s)
        self.log.board = EpochBoard(RunDir(job.run_dir).tensorboard, self.s.epoch) if cfg.tensorboard else None
        write_json(RunDir(job.run_dir).model_json,
                    model_info(job.config, job.element_energies, self.p.outputs, job.metadata,
                               n_parameters=self.p.n_parameters, init_note=self.init_note, model=job.model))
        with atomic_write(RunDir(job.run_dir).config_yaml) as fh:
            fh.write(job.config.to_yaml())
        write_history(RunDir(job.run_dir).history_csv, self.s.history, self.p.columns)
        self.log.line(f"training: {len(job.train_loader)} batches per epoch, loss terms "
                      f"{', '.join(f'{t}*{w:g}' for t, w in self.p.weights.items())}, optimizer {cfg.optimizer}, "
                      f"schedule {cfg.schedule}, accumulate {cfg.accumulate}, ema {cfg.ema_decay:g}")
        if self.p.schedule.record is not None:
            self.log.line(self.p.schedule.describe(), terminal=False)
        if self.p.parallel is not None:
            self.log.line(f"data parallel over {self.p.parallel.describe()}: {self.p.steps_per_epoch} steps in "
                          f"epoch 1, each on up to {self.p.parallel.n} batches (one per device)")
        reason = self.done_reason()
        if reason is not None:
            self.log.line(f"nothing to do: the run is {reason} at epoch {self.s.epoch}")
            return self.summary(reason)
        deadline = None if cfg.max_time_min is None else self.t0 + 60.0 * cfg.max_time_min
        try:
            while True:
                status = self.run_epoch(deadline)
                if status is not None:
                    break
        except TrainingDiverged:
            self.cadence.flush_best()  # the best epoch before the divergence stays, as it was
            raise
        if status in ("completed", "early_stopped"):
            self.cadence.flush_best()
            record_spread_scales(job, self.p.table, self.log)
        extra = f" (+{self.s.batch} batches)" if self.s.batch else ""
        self.log.line(f"{status} after epoch {self.s.epoch}{extra}, "
                      f"step {self.s.step}; best epoch {self.s.best_epoch}; {self.compile_note()}")
        return self.summary(status)

    def run_epoch(self, deadline: float | None) -> str | None:
        """Train (the rest of) one epoch and finish it; a status when the run stops."""
        s, cfg = self.s, self.cfg
        epoch = s.epoch
        n, batches = epoch_batches(self.job.train_loader, epoch, s.batch)
        bar = self.log.progress
        bar.start_epoch(epoch, self.p.schedule.end_epoch(), n, s.batch)
        last_valid = s.last_valid_loss()
        acc = s.acc
        pending = None
        interrupted = None
        t_loop = time.perf_counter()
        try:
            for size, group, dev in step_batches(self.p.parallel, self.job.train_loader, epoch, s.batch, batches,
                                                 self.p.train_batch):
                for b in group:
                    count_batch(acc, b)
                factor = self.p.schedule.factor(s.step, s.plateau.factor)
                self.state, metrics = self.p.train_step(self.state, dev, factor)
                if pending is not None:
                    take_step(pending, acc, self.p.n_devices)  # the previous step, while this one runs
                s.batch += size
                s.step += 1
                pending = PendingStep(epoch, s.batch, s.step, [(b["index"], b.get("dataset", 0)) for b in group],
                                      metrics)
                bar.advance(size, acc.mean_loss(), last_valid)
                if self.job.on_step is not None:
                    self.job.on_step(epoch, s.batch)
                if self.stop_requested():
                    interrupted = "interrupted"
                elif deadline is not None and self.clock() > deadline:
                    interrupted = "time_limit"
                if interrupted:
                    break
            if pending is not None:
                take_step(pending, acc, self.p.n_devices)
        finally:
            acc.train_s += time.perf_counter() - t_loop
        if interrupted:
            why = ((self.stop.name or "a signal to another process") if interrupted == "interrupted"
                   else f"max_time_min={cfg.max_time_min:g}")
            self.save_latest(interrupted)
            self.log.line(f"{why}: stopped in epoch {epoch + 1} after {s.batch}/{n} batches; "
                          f"checkpoint written, run again to resume")
            return interrupted
        return self.finish_epoch(deadline)

    def validate(self, epoch_no: int) -> dict | None:
        """The validation loss and metrics after epoch ``epoch_no`` (EMA parameters when kept),
        or None when there is nothing to validate."""
        params = self.state["ema_params"] if self.state["ema_params"] is not None else self.state["params"]
        sums = evaluate_sums(self.p.eval_step, params, self.job.valid_loader, self.p.table, self.p.parallel)
        if sums is None:
            return None
        weights = {t: w for t, w in self.p.weights.items() if f"{t}_n" in sums}
        members = sums.pop(MEMBER_SUMS, None)
        out = {"valid_loss": float(loss_from_sums(sums, weights, self.cfg.energy_loss, np))}
        out.update(metrics_from_sums(sums, "valid"))
        if members is not None:  # an ensemble: valid_loss is its mean prediction's, then each member's
            losses = loss_from_sums(members, weights, self.cfg.energy_loss, np)
            out.update({f"valid_loss_m{k}": float(v) for k, v in enumerate(losses)})
        if not np.isfinite(out["valid_loss"]):
            raise TrainingDiverged(f"non-finite validation loss ({out['valid_loss']!r}) after epoch {epoch_no}; "
                                   "no checkpoint written, the last good one is kept")
        return out

    def keep_best(self, epoch_no: int, monitor: float, row: dict) -> bool:
        """Hold a new best epoch's parameters (an ensemble's per member: :mod:`.members`)."""
        s = self.s
        meta = json_ready({"epoch": epoch_no, "loss": monitor, "metrics": row})
        params, ema = self.state["params"], self.state["ema_params"]
        if self.members is not None and "valid_loss_m0" in row:
            return self.members.keep_best(s, self.cadence, epoch_no, row, self.cfg.early_stopping_patience,
                                          [None if t is None else self.saveable(t) for t in (params, ema)], meta)
        if s.best_loss is None or monitor < s.best_loss:
            s.best_loss, s.best_epoch = float(monitor), epoch_no
            self.cadence.keep_best(epoch_no, params, ema, meta)
            return True
        return False

    def finish_epoch(self, deadline: float | None) -> str | None:
        s, cfg = self.s, self.cfg
        epoch_no = s.epoch + 1
        acc = s.acc
        row = {"epoch": epoch_no, "step": s.step // cfg.accumulate, **acc.means()}
        row.update(metrics_from_sums(acc.sums, "train") if acc.n else {})
        monitor = row["train_loss"]
        validated = self.job.valid_loader is None
        last = self.p.schedule.end_epoch()
        if self.job.valid_loader is not None and (epoch_no % cfg.valid_every == 0 or epoch_no >= last):
            valid = self.validate(epoch_no)
            if valid is not None:
                row.update(valid)
                monitor = row["valid_loss"]
                validated = True
        row["learning_rate"] = self.learning_rate()
        improved = False
        if validated:
            improved = self.keep_best(epoch_no, monitor, row)
            if s.plateau.observe(monitor, cfg):
                self.log.line(f"plateau: learning-rate factor now {s.plateau.factor:g}")
        s.epoch, s.batch, s.acc = epoch_no, 0, EpochSums()
        row["wall_time_s"] = self.wall()
        row.update(epoch_cost(acc, self.compiles.count))
        s.history.append(json_ready(row))
        write_history(RunDir(self.job.run_dir).history_csv, s.history, self.p.columns)
        self.log.scalars(s.history[-1])
        first = self.p.schedule.decided is None  # the decision on the terminal; later re-plans in train.log
        decided = self.p.schedule.epoch_end(s.epoch, s.step, self.clock(), deadline, self.compiles.count)
        if decided:
            self.log.line(decided, terminal=first or self.log.progress.verbose)
        status = self.done_reason()
        if status is None and self.stop_requested():
            status = "interrupted"
        elif status is None and deadline is not None and self.clock() > deadline:
            status = "time_limit"
        if status is not None or decided and first or self.cadence.latest_due(epoch_no):  # a decided span: kept
            self.save_latest(status or "running")
            self.p.schedule.saved(self.clock())
        keys = ["train_loss", "valid_loss", "valid_energy_mae_eV", "valid_forces_mae_eV_per_A",
                "valid_esp_rmse_kcal_per_mol_e", "learning_rate"]
        verbose = self.log.progress.verbose
        self.log.line(f"epoch {epoch_no}/{self.p.schedule.end_epoch()} {format_metrics(row, keys)} "
                      f"time={row['wall_time_s']:.1f}s compilations={self.compiles.count}"
                      + (" *best" if improved else ""), terminal=verbose)
        if not verbose and self.log.progress.summary_due(epoch_no, status is not None):
            self.log.progress.say(summary_line(row, self.p.schedule.end_epoch(), s.best_epoch, s.best_loss))
        if epoch_no == 1:
            self.log.line(self.compile_note(), terminal=verbose)
        return status
