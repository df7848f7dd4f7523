"""Data parallelism over the local devices with ``jax.sharding`` (one step over several batches).

With ``training.data_parallel: auto`` (the default) and ``n > 1`` local devices
(``jax.local_devices()``), :func:`~mmlwf.training.train` runs each optimisation step on up
to ``n`` loader batches at once, one per device:

* **Grouping.** The batches of an epoch are taken in the loader's plan order and grouped
  consecutively: a group closes when it holds ``n`` batches or when the next batch has other
  array shapes (the loader pads batches to a few fixed shapes; the smaller ones come at the
  end of an epoch). A group of fewer than ``n`` batches is filled with all-padding batches
  (:func:`padding_batch`: every mask False, in the padding convention of :mod:`mmlwf.batch`),
  which add nothing to any sum. Checkpoints are
  taken between steps and each group starts afresh, so a resumed run groups the rest of the
  epoch exactly as an uninterrupted run does (resume stays bitwise exact on CPU).
* **Placement.** The ``n`` (prepared) batches are stacked along a new leading axis that is
  sharded over a 1-D :class:`jax.sharding.Mesh` ``("data",)`` (``NamedSharding(mesh,
  P("data"))``): device ``d`` holds batch ``d``. Parameters, optimiser state and EMA are
  replicated (``P()``).
* **Loss.** Inside ``shard_map`` each device reduces its own batch to the masked error sums
  of :func:`~.losses.batch_sums`; the sums (and their counts) are added over the devices
  (``psum``) and the loss is formed from these global sums, i.e. ``sum of per-device masked
  sums / global counts``. Loss, gradient and update are therefore those of one batch
  holding the molecules of all ``n`` batches (equal up to float32 rounding of the sums).
  The gradient is taken outside ``shard_map``; its transpose adds the per-device
  gradient contributions.

**What a step is.** One step = one call of the jitted train step = one group of up to ``n``
loader batches. ``accumulate: k`` averages ``k`` such steps per optimiser update; the
learning-rate schedule, warm-up and ``decay_steps`` count optimiser updates as before, and
``updates_per_epoch`` is the number of steps of epoch 0 divided by ``k``. The history's
``step`` column is the optimiser update count, the summary's ``steps`` counts steps, and the
checkpoint meta's ``batch`` counts the *loader batches* done of the epoch in progress (so a
checkpoint is resumable whatever the number of devices when it is read back). With one
device a step is one batch and nothing here is used: the single-device program is unchanged.

Resuming on another number of devices (or switching ``data_parallel``) continues from the
same batch of the plan, but the later steps group batches differently (and the schedule's
length follows the new step count), so the result is no longer that of an uninterrupted run;
the log says so. Checkpoints hold the first device's copy of the replicated state and read
back on any number of devices.

Several processes (``jax.distributed``): the mesh spans every process's devices and each
process builds only its slots' batches (:mod:`.distributed`). A group's batches are stacked on the host and sent to the
devices with one ``jax.device_put``. Validation uses the same grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np

from ..batch import GraphBatch, as_batch, padding_like

AXIS = "data"


def shape_key(batch) -> tuple:
    """What must agree for batches to be stacked: the names, shapes and dtypes of the arrays
    (of a :class:`~mmlwf.batch.GraphBatch` or a dict of arrays)."""
    return tuple(sorted((k, np.shape(v), np.asarray(v).dtype.str) for k, v in batch.items()))


def group_sizes(keys: Sequence[Hashable], n: int) -> list[int]:
    """Sizes of the consecutive groups of items with these shape keys (see module doc)."""
    sizes: list[int] = []
    prev = None
    for k in keys:
        if sizes and k == prev and sizes[-1] < n:
            sizes[-1] += 1
        else:
            sizes.append(1)
        prev = k
    return sizes


def group_batches(batches: Iterable[dict], n: int, key: Callable = shape_key) -> Iterator[list[dict]]:
    """Consecutive groups of at most ``n`` batches with one shape key, in order."""
    group: list[dict] = []
    prev = None
    for b in batches:
        k = key(b)
        if group and (k != prev or len(group) == n):
            yield group
            group = []
        group.append(b)
        prev = k
    if group:
        yield group


def step_batches(parallel: DataParallel | None, loader, epoch: int, start: int, batches: Iterable,
                 train_batch: Callable) -> Iterator[tuple[int, list, GraphBatch]]:
    """``(loader batches in the step, those of this process, device batch)`` of each training
    step of ``epoch`` from loader batch ``start`` (``batches``: the loader's from there on;
    ``train_batch``: a loader batch to a device batch): one batch without ``parallel``, else a
    group of up to ``n`` stacked over the devices (of several processes:
    :func:`.distributed.local_steps`, which reads only this process's batches)."""
    if parallel is None:
        for batch in batches:
            yield 1, [batch], train_batch(batch)
    elif parallel.multiprocess:
        from .distributed import local_steps

        yield from local_steps(loader, epoch, start, parallel, train_batch)
    else:
        for group in parallel.groups(batches):
            yield len(group), group, parallel.stack([train_batch(b) for b in group])


def padding_batch(like: GraphBatch | dict) -> GraphBatch:
    """A batch of the shapes of the prepared batch ``like`` holding no molecule: masks False,
    indices pointing at the last (padding) atom or graph, everything else 0
    (:func:`mmlwf.batch.padding_like`)."""
    return padding_like(like)


def _shard_map(f, mesh, in_specs, out_specs):
    import jax

    sm = getattr(jax, "shard_map", None)
    if sm is not None:  # jax >= 0.6
        return sm(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


class DataParallel:
    """The mesh over ``devices`` and the helpers the engine uses to run a step on it."""

    def __init__(self, devices: Sequence) -> None:
        import jax
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        self.devices = list(devices)
        self.n = len(self.devices)
        #: the slots (mesh positions) of this process's devices; all of them in one process
        self.local_slots = [i for i, d in enumerate(self.devices) if d.process_index == jax.process_index()]
        self.multiprocess = len(self.local_slots) < self.n
        self.mesh = Mesh(np.asarray(self.devices, dtype=object), (AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())

    def describe(self) -> str:
        procs = len({d.process_index for d in self.devices})
        where = f" in {procs} processes" if procs > 1 else ""
        return f"{self.n} devices{where} ({', '.join(str(d) for d in self.devices)})"

    # -- host side
    def groups(self, batches: Iterable[dict]) -> Iterator[list[dict]]:
        return group_batches(batches, self.n)

    def steps_per_epoch(self, loader, epoch: int = 0) -> int:
        """Steps of ``epoch`` of ``loader`` (from its plan when it has one: no batch is built)."""
        if hasattr(loader, "plan") and hasattr(loader, "budgets"):
            return len(group_sizes([loader.budgets[spec[2]] for spec in loader.plan(epoch)], self.n))
        return sum(1 for _ in self.groups(loader.epoch(epoch)))

    def stack(self, prepared: Sequence[GraphBatch]) -> GraphBatch:
        """The prepared batches of a group, filled up to ``n`` with padding, stacked along a
        new leading axis and sharded over the devices (one batch each)."""
        import jax

        batches = [as_batch(b) for b in prepared]
        if self.multiprocess:  # this process's slots only
            mine = [batches[i] for i in self.local_slots if i < len(batches)]
            return self.stack_local(mine, padding_batch(batches[0]))
        if len(batches) < self.n:
            batches += [padding_batch(batches[0])] * (self.n - len(batches))
        host = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)
        return jax.device_put(host, self.batch_sharding)

    def stack_local(self, prepared: Sequence[GraphBatch], pad: GraphBatch | None) -> GraphBatch:
        """The global stacked batch from this process's batches (those of its first slots; the
        rest of its slots get ``pad``): several processes (:mod:`.distributed`)."""
        import jax

        batches = [as_batch(b) for b in prepared]
        if len(batches) < len(self.local_slots):
            batches += [as_batch(pad)] * (len(self.local_slots) - len(batches))
        host = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x,
                                                                             (self.n, *x.shape[1:])), host)

    def replicate(self, tree):
        import jax

        if self.multiprocess:  # every process holds the same values: each places its copies
            return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
                                tree)
        return jax.device_put(tree, self.replicated)

    def to_one_device(self, tree):
        """``tree`` on the first device only (what is written to checkpoints, so that they
        read back on any number of devices). Several processes: ``tree`` as it is (replicated;
        orbax writes it once, and :func:`~.checkpoint.load_params` reads it onto one device)."""
        import jax

        if self.multiprocess:
            return tree
        return jax.device_put(tree, self.devices[0])

    # -- device side
    def global_sums(self, forward: Callable, sums_fn: Callable) -> Callable:
        """``f(params, stacked) -> sums`` added over the devices (replicated), where each device
        computes ``sums_fn(forward(params, batch), batch)`` of its own batch."""
        import jax
        from jax.sharding import PartitionSpec as P

        def local(params, stacked):
            batch = jax.tree.map(lambda x: x[0], stacked)  # this device's batch
            sums = sums_fn(forward(params, batch), batch)
            return jax.tree.map(lambda v: jax.lax.psum(v, AXIS), sums)

        return _shard_map(local, self.mesh, in_specs=(P(), P(AXIS)), out_specs=P())
