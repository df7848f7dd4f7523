"""Orbax checkpoints of a run: ``checkpoints/latest`` (resume) and ``checkpoints/best``.

Each checkpoint is a numbered orbax step directory holding the items ``params``,
``opt_state`` (latest only), ``ema_params`` (when EMA is on) and ``meta`` (JSON: counters,
RNG, plateau state, the history so far, the resolved config). Orbax writes a step into a
temporary directory and renames it when complete, so a kill at any moment leaves the
previous checkpoint readable. ``latest`` keeps one step (numbered by save count);
``best`` steps are numbered by epoch and pruned by :meth:`CheckpointStore.prune_best`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

LATEST, BEST = "latest", "best"
_ITEMS = ("params", "opt_state", "ema_params", "meta")


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
        self.latest = _manager(self.directory / LATEST, max_to_keep=1)
        self.best = _manager(self.directory / BEST, max_to_keep=None)

    # -- latest
    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(self, state: dict, meta: dict) -> int:
        """Write ``state`` (``params``, ``opt_state``, optional ``ema_params``) and ``meta``."""
        import orbax.checkpoint as ocp

        step = (self.latest_step() or 0) + 1
        items = {k: ocp.args.StandardSave(v) for k, v in state.items() if v is not None}
        items["meta"] = ocp.args.JsonSave(meta)
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

    mngr = _Reader(Path(run_dir) / "checkpoints" / which)
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

    run_dir = Path(run_dir)
    with open(run_dir / "model.json") as fh:
        info = json.load(fh)
    mngr = _Reader(run_dir / "checkpoints" / which)
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{run_dir}: no '{which}' checkpoint")
        if ema is None:
            ema = bool(info.get("ema", False))
        item = "ema_params" if ema else "params"
        got = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))
        return got[item], info
    finally:
        mngr.close()
