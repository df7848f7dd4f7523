"""Training across processes (``jax.distributed``): one step on the devices of every process.

``mmlwf train`` runs as ``N`` cooperating processes when it is started by ``srun`` with
``N > 1`` tasks (``jax.distributed`` finds the coordinator through SLURM) or by the local
launcher ``mmlwf train ... --num-processes N`` (:mod:`mmlwf.commands.launch`: ``N`` child
processes on this machine, one CPU device each, talking through the gloo CPU collectives;
each child is told its place by :data:`ENV`). :func:`initialize` joins a process to the others
before jax is used.

What changes against one process (:mod:`.parallel` holds the rest):

* **Mesh.** :class:`~.parallel.DataParallel` is built over ``jax.devices()`` (all processes'),
  so a step takes up to ``n_global`` loader batches. Every process plans the same epoch
  (a function of seed and epoch) and the same groups, but assembles only the batches of its
  own devices' slots (:func:`local_steps`) and hands them to
  ``jax.make_array_from_process_local_data``; validation batches are read by every process
  (the validation set is small) and each keeps its slots. The error sums are ``psum``-ed over
  all devices, so loss, gradient and update equal one process's on the same global batch.
* **Agreement.** Every decision of the loop must be the same on every process (or the
  collectives hang): losses are global, and the loop's clock (time limit, checkpoint interval,
  a time budget) is process 0's, sent to all (:meth:`Agreement.clock`); a SIGTERM/SIGINT seen
  by any process stops all of them after the same step (:meth:`Agreement.stopped`).
* **Files.** Every process takes part in the orbax saves (orbax writes each array once, from
  the primary host) into the run directory's ``checkpoints/``; ``train.log``, ``history.csv``,
  ``model.json``, ``config.yaml`` and TensorBoard events are process 0's (the others write theirs
  to a scratch directory that is removed). The cost columns of ``history.csv`` (structures
  and atoms per second, padding efficiency) count process 0's batches only.
* **Resume.** The checkpoint meta's ``batch`` counts loader batches, so a run resumes with
  another process (device) count as with another device count (:mod:`.parallel`).

Not supported across processes: ensembles' per-member best checkpoints were not tested;
a loader without a plan (every planned :class:`~mmlwf.batching.BatchLoader` is fine).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ConfigError
from .progress import TrainingProgress

#: ``COORDINATOR_HOST:PORT,NUM_PROCESSES,PROCESS_ID``: set by the local launcher for its children
ENV = "MMLWF_DISTRIBUTED"


def under_srun() -> bool:
    """Whether this process is one of several tasks of a SLURM job step (``srun -n N``, N > 1)."""
    return "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS",
                                                                os.environ.get("SLURM_NTASKS", "1"))) > 1


def initialize() -> bool:
    """Join the other processes (:data:`ENV`, or SLURM under ``srun`` with several tasks);
    False (nothing done) for a single process. Call before jax computes anything."""
    spec = os.environ.get(ENV)
    if not spec and not under_srun():
        return False
    import jax

    if jax.distributed.is_initialized():
        return True
    if spec:
        try:
            address, n, pid = spec.split(",")
            n, pid = int(n), int(pid)
        except ValueError:
            raise ConfigError(f"{ENV}={spec!r}: expected HOST:PORT,NUM_PROCESSES,PROCESS_ID") from None
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(address, num_processes=n, process_id=pid)
    else:  # srun: coordinator, count and rank from SLURM's environment
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    return True


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main() -> bool:
    """Process 0 (the one that writes the run's files); True for a single process."""
    import jax

    return jax.process_index() == 0


class QuietProgress(TrainingProgress):
    """The terminal side of a process other than 0: says nothing."""

    def __init__(self) -> None:
        super().__init__(False)

    def say(self, text: str) -> None:
        pass


class Agreement:
    """The values every process must agree on, gathered over all processes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.local_clock = clock

    @staticmethod
    def _gather(values) -> np.ndarray:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64)))

    def clock(self) -> float:
        """Process 0's clock (seconds since its start), the same on every process."""
        return float(self._gather([self.local_clock()])[0, 0])

    def stopped(self, local: bool) -> bool:
        """Whether any process has been told to stop."""
        return bool(self._gather([float(local)]).max() > 0)


def local_steps(loader, epoch: int, start: int, parallel, train_batch: Callable) -> Iterator[tuple[int, list, object]]:
    """``(batches in the step, this process's loader batches, global device batch)`` of each step
    of ``epoch`` from loader batch ``start``: the groups of :func:`~.parallel.group_sizes` over the
    whole plan, of which this process assembles only the batches of its own slots."""
    from .parallel import group_sizes, padding_batch

    if not (hasattr(loader, "plan") and hasattr(loader, "assemble") and hasattr(loader, "budgets")):
        raise ConfigError("training across processes needs a planned loader (a BatchLoader)")
    specs = loader.plan(epoch)[start:]
    at = 0
    for size in group_sizes([loader.budgets[s[2]] for s in specs], parallel.n):
        group = specs[at:at + size]
        at += size
        mine = [loader.assemble(*group[i]) for i in parallel.local_slots if i < size]
        prepared = [train_batch(b) for b in mine]
        pad = None
        if len(prepared) < len(parallel.local_slots):  # a slot of this process is padding
            k, _, shape_id = group[0]
            pad = padding_batch(train_batch(loader.assemble(k, np.zeros(0, np.int64), shape_id)))
        yield size, mine, parallel.stack_local(prepared, pad)
