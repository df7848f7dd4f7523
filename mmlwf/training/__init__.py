"""Training: config, losses, optimisers and schedules, EMA, orbax checkpoints, exact resume,
NaN guard, per-epoch history and log (the loop and the run directory: ``docs/architecture.md``).

Entry point: :func:`train`. Modules: :mod:`.config` (YAML config and overrides),
:mod:`.losses` (targets, forces, masked losses and metrics), :mod:`.optim` (optimisers,
schedules, plateau), :mod:`.schedule` (a decaying schedule's span, fixed once per run, sized
to a time budget), :mod:`.state` (jitted train/eval steps), :mod:`.checkpoint` (orbax
latest/best, :func:`load_params`), :mod:`.history` (history.csv, train.log),
:mod:`.monitor` (XLA compilation count), :mod:`.progress` (what the terminal shows: a bar,
summary lines), :mod:`.data` (loaders from the workflow's files; they own the batch shapes),
:mod:`.parallel` (data parallelism over the local devices), :mod:`.engine` (the loop),
:mod:`.setup` (what a run is given and builds before its first step, ``model.json``),
:mod:`.loop_state` (the loop's host state in the checkpoints), :mod:`.cadence` (when
checkpoints are written), :mod:`.step_metrics` (a step's metrics to the epoch sums, the
divergence check), :mod:`.loaders` (what the loop needs of a loader), :mod:`.signals`
(graceful stops, exit codes).
"""

from .checkpoint import CheckpointStore, checkpoint_meta, load_params
from .config import (
    Config,
    TrainingConfig,
    config_from_dict,
    describe,
    load_config,
    training_config,
)
from .engine import EXIT_CODES, EXIT_INTERRUPTED, TrainingDiverged, exit_code, train
from .history import read_history
from .losses import energy_and_forces, prepare_batch, reference_table

__all__ = [
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "CheckpointStore",
    "Config",
    "TrainingConfig",
    "TrainingDiverged",
    "checkpoint_meta",
    "config_from_dict",
    "describe",
    "energy_and_forces",
    "exit_code",
    "load_config",
    "load_params",
    "prepare_batch",
    "read_history",
    "reference_table",
    "train",
    "training_config",
]
