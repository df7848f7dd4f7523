"""Orbax checkpoints of a run: ``checkpoints/latest`` (resume) and ``checkpoints/best``.

Each checkpoint is a numbered orbax step directory holding the items ``params``,
``opt_state`` (latest only), ``ema_params`` (when EMA is on) and ``meta`` (JSON: counters,
RNG, plateau state, the history so far, the resolved config). Orbax writes a step into a
temporary directory and renames it when complete, so a kill at any moment leaves the
previous checkpoint readable. ``latest`` keeps one step (numbered by save count);
``best`` steps are numbered by epoch and pruned by :meth:`CheckpointStore.prune_best`.
A save that cannot be written (disk full, read-only) raises one
:class:`~mmlwf.errors.OutputError` (:func:`_one_line_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import inspect
import json
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import OutputError
from ..rundir import BEST, LATEST, RunDir
_ITEMS = ("params", "opt_state", "ema_params", "meta")
#: loggers a failing orbax save floods (one error with traceback per array and thread)
_NOISY_LOGGERS = ("absl", "orbax", "asyncio", "concurrent.futures")
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _quiet_orbax() -> None:
    for name in ("absl", "orbax", "orbax.checkpoint"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _manager(directory: Path, max_to_keep: int | None):
    import orbax.checkpoint as ocp

    _quiet_orbax()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=False,  # a save has returned = it is on disk
        cleanup_tmp_directories=True,  # left over by a killed save
        create=True,
    )
    return ocp.CheckpointManager(Path(directory).absolute(),  # orbax needs absolute paths
                                 options=options, item_names=_ITEMS)


def _os_errno(exc: BaseException) -> int | None:
    """The errno behind an orbax/tensorstore failure (an OSError, or tensorstore's
    ``[os_error_code='28']`` in a ValueError), following the exception chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        found = _OS_ERROR_CODE.search(str(exc))
        if found:
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _ignore(*args) -> None:
    pass


class _OrbaxLeftovers(logging.Filter):
    """Drops asyncio's reports on the tasks of a failed orbax save (their error was raised
    as one OutputError), should one be collected after :func:`_settle_abandoned_work`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in f"{record.msg} {record.args} {record.exc_info}"


_ORBAX_LEFTOVERS = _OrbaxLeftovers()


def _settle_abandoned_work() -> None:
    """Close the coroutines a failed orbax save left suspended and mark the errors of the
    tasks of its closed event loops as seen: collected later (at interpreter exit at the
    latest), each would print a traceback."""
    import asyncio

    for obj in gc.get_objects():
        if inspect.iscoroutine(obj) and obj.cr_frame is not None and "orbax" in obj.cr_code.co_filename:
            with contextlib.suppress(BaseException):
                obj.close()
        elif isinstance(obj, asyncio.Future):
            with contextlib.suppress(BaseException):
                if obj.get_loop().is_closed() and obj.done() and not obj.cancelled():
                    obj.exception()  # retrieved: no "Task exception was never retrieved"


@contextlib.contextmanager
def _one_line_failure(directory: Path, kept: bool = False) -> Iterator[None]:
    """Run an orbax save (or manager set-up) whose operating-system failure is one
    :class:`OutputError` naming ``directory``.

    A failing save is loud: each orbax worker thread logs its exception with a traceback,
    tensorstore prints the tracebacks of callbacks into a closed event loop, and abandoned
    asyncio tasks print theirs when collected: hundreds to thousands of lines for one full
    disk. The exception raised to the caller says it all, so during the save those loggers
    and the hooks for exceptions in threads and finalizers are quiet; after a failure the
    save's threads are waited for, its garbage collected and its temporary directories
    removed (space back, nothing half-written) while they still are. ``kept``: an earlier
    checkpoint stays usable (said in the message).
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    hooks = sys.excepthook, sys.unraisablehook, threading.excepthook
    before = set(threading.enumerate())
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    sys.excepthook = sys.unraisablehook = threading.excepthook = _ignore
    try:
        yield
    except Exception as exc:
        code = _os_errno(exc)
        for thread in set(threading.enumerate()) - before:
            with contextlib.suppress(Exception):  # orbax's threads re-raise their error on join
                threading.Thread.join(thread, timeout=30)
        _settle_abandoned_work()
        gc.collect()
        logging.getLogger("asyncio").addFilter(_ORBAX_LEFTOVERS)  # once: filters are a set
        for tmp in Path(directory).glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if code is None:
            raise
        reason = f"{os.strerror(code)} ({errno.errorcode.get(code, code)}) while saving a checkpoint"
        raise OutputError(directory, reason + ("; the previous checkpoint is kept" if kept else "")) from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        sys.excepthook, sys.unraisablehook, threading.excepthook = hooks


class _Reader:
    """Reads the finished steps of a checkpoint directory and writes nothing (for evaluation,
    export, MD: the run may be read-only). Not a read-only ``CheckpointManager``, which logs
    absl warnings on every open."""

    def __init__(self, directory: Path) -> None:
        import orbax.checkpoint as ocp

        _quiet_orbax()
        self.directory = Path(directory).absolute()
        self.checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())

    def latest_step(self) -> int | None:
        import orbax.checkpoint as ocp

        if not self.directory.is_dir():
            return None
        return max(ocp.path.step.checkpoint_steps(self.directory), default=None)  # finished steps only

    def restore(self, step: int, args):
        return self.checkpointer.restore(self.directory / str(step), args=args)

    def on_one_device(self, step: int, item: str):
        """The abstract tree of ``item`` of ``step``, placed on the first local device (whatever
        devices and processes wrote it: a multi-process run's replicated arrays read back here)."""
        import jax
        import orbax.checkpoint as ocp

        metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / item)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(metadata, "tree", metadata))

    def close(self) -> None:
        self.checkpointer.close()


def _abstract(tree):
    import jax
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointStore:
    """The ``latest`` and ``best`` checkpoints under ``<run_dir>/checkpoints``."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        with _one_line_failure(self.directory / LATEST):
            self.latest = _manager(self.directory / LATEST, max_to_keep=1)
        with _one_line_failure(self.directory / BEST):
            self.best = _manager(self.directory / BEST, max_to_keep=None)

    def empty(self) -> bool:
        """No checkpoint at all (nothing a re-run could resume or use); False when unsure."""
        try:
            return self.latest.latest_step() is None and not self.best.all_steps()
        except Exception:
            return False

    # -- latest
    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(self, state: dict, meta: dict) -> int:
        """Write ``state`` (``params``, ``opt_state``, optional ``ema_params``) and ``meta``."""
        import orbax.checkpoint as ocp

        step = (self.latest_step() or 0) + 1
        items = {k: ocp.args.StandardSave(v) for k, v in state.items() if v is not None}
        items["meta"] = ocp.args.JsonSave(meta)
        with _one_line_failure(self.directory / LATEST, kept=step > 1):
            self.latest.save(step, args=ocp.args.Composite(**items))
            self.latest.wait_until_finished()
        return step

    def restore_latest(self, like: dict) -> tuple[dict, dict] | None:
        """``(state, meta)`` of the latest checkpoint with the structure of ``like``, or None."""
        import orbax.checkpoint as ocp

        step = self.latest_step()
        if step is None:
            return None
        items = {k: ocp.args.StandardRestore(_abstract(v)) for k, v in like.items() if v is not None}
        items["meta"] = ocp.args.JsonRestore()
        got = self.latest.restore(step, args=ocp.args.Composite(**items))
        state = {k: (got[k] if v is not None else None) for k, v in like.items()}
        return state, dict(got["meta"])

    # -- best
    def best_steps(self) -> list[int]:
        return sorted(self.best.all_steps())

    def save_best(self, epoch: int, params, ema_params, meta: dict) -> None:
        import orbax.checkpoint as ocp

        if epoch in self.best.all_steps():  # left by a run killed before its latest checkpoint
            self.best.delete(epoch)
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if ema_params is not None:
            items["ema_params"] = ocp.args.StandardSave(ema_params)
        with _one_line_failure(self.directory / BEST, kept=bool(self.best.all_steps())):
            self.best.save(epoch, args=ocp.args.Composite(**items))
            self.best.wait_until_finished()

    def prune_best(self, keep: int | None) -> None:
        """Delete every best checkpoint except epoch ``keep`` (None: delete all)."""
        for step in self.best.all_steps():
            if step != keep:
                self.best.delete(step)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def checkpoint_meta(run_dir: str | os.PathLike, which: str = BEST) -> dict:
    """The JSON ``meta`` item of the ``best`` or ``latest`` checkpoint of a run."""
    import orbax.checkpoint as ocp

    mngr = _Reader(RunDir(run_dir).checkpoint(which))
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{run_dir}: no '{which}' checkpoint")
        return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    finally:
        mngr.close()


def load_params(run_dir: str | os.PathLike, which: str = BEST, *, ema: bool | None = None) -> tuple[Any, dict]:
    """``(variables, model_info)`` to rebuild a trained model for prediction or export.

    ``which``: ``"best"`` (lowest validation loss) or ``"latest"``. ``ema``: use the EMA
    parameters (default: when the run kept an EMA, as validation did). ``model_info`` is
    ``model.json`` (model config, units, element energies). The variables are the pytree
    passed to ``model.apply``.
    """
    import orbax.checkpoint as ocp

    run = RunDir(run_dir)
    with open(run.model_json) as fh:
        info = json.load(fh)
    mngr = _Reader(run.checkpoint(which))
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{run_dir}: no '{which}' checkpoint")
        if ema is None:
            ema = bool(info.get("ema", False))
        item = "ema_params" if ema else "params"
        got = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(
            mngr.on_one_device(step, item))}))
        return got[item], info
    finally:
        mngr.close()
