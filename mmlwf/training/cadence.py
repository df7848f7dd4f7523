"""When the training loop writes its checkpoints, and the ``best`` parameters held until then.

``latest``: at the end of an invocation's first epoch, then every ``checkpoint_every`` epochs
but no sooner than ``checkpoint_interval_min`` after the previous write (:meth:`Cadence.latest_due`);
the loop also writes it at the epoch a time budget's schedule is sized (the span a resumed run
needs) and when the run stops. A new ``best`` epoch's parameters are held as device copies
(the next step donates the state's buffers; no host round trip) and written just before the
next ``latest``: a run killed in between redoes those epochs on resume, and their best with
them (the resumed run prunes a ``best`` newer than ``latest``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checkpoint import CheckpointStore


class Cadence:
    """The ``latest`` interval and the pending ``best`` of one invocation of the loop.

    ``saveable(tree)``: a tree as written to a checkpoint (from the first device with data
    parallelism); ``clock``: seconds (the loop's clock).
    """

    def __init__(self, store: CheckpointStore, every: int, interval_min: float, clock: Callable[[], float],
                 saveable: Callable[[Any], Any]) -> None:
        self.store = store
        self.every = every
        self.interval_s = 60.0 * interval_min
        self.clock = clock
        self.saveable = saveable
        self.latest_at: float | None = None  # clock of this invocation's last 'latest' write
        self.pending: tuple | None = None  # (epoch, params, ema_params, meta) not yet written

    def latest_due(self, epoch_no: int) -> bool:
        """Whether the end of epoch ``epoch_no`` of a running run writes ``latest`` (this
        invocation's first write is due at once)."""
        if epoch_no % self.every:
            return False
        return self.latest_at is None or self.clock() - self.latest_at >= self.interval_s

    def keep_best(self, epoch_no: int, params: Any, ema_params: Any, meta: dict) -> None:
        """Hold device copies of a new best epoch's parameters (``ema_params`` may be None)."""
        import jax
        import jax.numpy as jnp

        def copy(tree):
            return None if tree is None else jax.tree.map(jnp.copy, self.saveable(tree))

        self.pending = (epoch_no, copy(params), copy(ema_params), meta)

    def flush_best(self) -> None:
        """Write the pending ``best`` checkpoint, if any."""
        if self.pending is not None:
            self.store.save_best(*self.pending)
            self.pending = None

    def save_latest(self, state: dict, meta: dict, best_epoch: int | None) -> None:
        """Write the pending ``best`` (if the caller has not), then ``latest`` with ``meta``, and
        drop ``best`` checkpoints other than ``best_epoch``'s."""
        self.flush_best()
        self.store.save_latest(self.saveable(state), meta)
        self.store.prune_best(best_epoch)
        self.latest_at = self.clock()
