"""The batch loader: packed datasets -> padded :class:`~mmlwf.batch.GraphBatch` es, prefetched.

Atoms of all molecules in a batch are concatenated, pairs come from a neighbour list within
the cutoff (and, for a model that asks, a second, long-range list within ``long_cutoff``:
``math.inf`` for every pair of a molecule), and each batch is padded to one of a few fixed
budgets. Only the rows a batch needs are read from the memory-mapped dataset, so memory
follows the batch size.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from ..packed import PackedDataset
from ..batch import GraphBatch, Pairs, from_fields, list_cutoff, padding_pairs
from .gather import fill_batch, gather_rows
from .neighbours import count_pairs, neighbour_pairs
from .plan import BatchPlan, Budget, derive_budgets, plan_epoch, size_table


@dataclass
class _Member:
    """One dataset of the loader: its rows, the molecules used, and their sizes."""

    name: str
    ds: PackedDataset
    indices: np.ndarray  # molecule indices used from ds
    sizes: np.ndarray  # (len(indices), 4 or 5): graphs, atoms, pairs, grid points[, long pairs]
    weight: float
    views: dict  # plain ndarray views of the fields used (no memmap overhead per batch)


def molecule_sizes(ds: PackedDataset, indices: np.ndarray, cutoff: float | None, chunk: int = 1 << 16, *,
                   long_cutoff: float | None = None) -> np.ndarray:
    """Per-molecule (1, atoms, pairs within ``cutoff``, grid points[, pairs within
    ``long_cutoff``]) for ``indices`` (:func:`~mmlwf.batching.plan.size_table`: no long-range
    column when ``long_cutoff`` is None), positions read in chunks; a None ``cutoff`` counts
    0, ``math.inf`` every ordered pair, ``n (n - 1)``."""
    n_atoms = np.asarray(ds.n_atoms[indices])
    pairs = np.zeros(indices.shape[0], np.int64)
    long = None if long_cutoff is None else np.zeros(indices.shape[0], np.int64)
    if long is not None and math.isinf(long_cutoff):  # no positions needed
        long[:] = n_atoms.astype(np.int64) * (n_atoms.astype(np.int64) - 1)
    by_distance = [(c, out) for c, out in ((cutoff, pairs), (long_cutoff, long)) if c is not None and math.isfinite(c)]
    if by_distance:
        for s in range(0, indices.shape[0], chunk):
            g = ds.gather(indices[s : s + chunk], fields=("R",))
            for c, out in by_distance:
                out[s : s + chunk] = count_pairs(g["R"], g["offsets"], c)
    grid = None
    if ds.grid_offsets is not None:
        grid = np.asarray(ds.grid_offsets[indices + 1]) - np.asarray(ds.grid_offsets[indices])
    return size_table(n_atoms, pairs, grid, long)


class BatchLoader:
    """Padded graph batches from one dataset or a weighted mixture of several.

    Each epoch visits every molecule of every dataset ``weight`` times (a fractional weight
    visits a seeded random part), in an order fixed by ``(seed, epoch)``. Batches come from
    one dataset each and carry its number in ``batch.dataset``. Batch arrays are numpy;
    :meth:`epoch` with ``device=True`` moves them to the default JAX device in the
    background thread.

    ``cutoff``: the message-passing pair list (None: none). ``long_cutoff``: the long-range
    list ``batch.long_pairs`` (None: none, the default; ``math.inf``: every ordered pair of
    each molecule, with ``Pairs.cutoff`` None), with its own budget. Batch shapes: ``budgets``,
    or derived (:func:`~mmlwf.batching.derive_budgets`) for ``batch_atoms`` atoms per batch
    when given, else for ``batch_size`` molecules.
    """

    def __init__(
        self,
        datasets: PackedDataset | Sequence[PackedDataset],
        indices: np.ndarray | Sequence[np.ndarray | None] | None = None,
        *,
        batch_size: int | None = 32,
        batch_atoms: int | None = None,
        cutoff: float | None = 5.0,
        long_cutoff: float | None = None,
        budgets: Sequence[Budget] | None = None,
        n_shapes: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
        prefetch: int = 4,
        workers: int = 2,
    ) -> None:
        single = isinstance(datasets, PackedDataset)
        dss = [datasets] if single else list(datasets)
        if single or indices is None or isinstance(indices, np.ndarray):
            indices = [indices] * len(dss) if not single else [indices]
        weights = [1.0] * len(dss) if weights is None else [float(w) for w in weights]
        names = [f"dataset{k}" for k in range(len(dss))] if names is None else list(names)
        if not (len(indices) == len(weights) == len(names) == len(dss)):
            raise ConfigError("datasets, indices, weights and names must have the same length")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError(f"mixture weights must be >= 0 and not all 0, got {weights}")
        self.cutoff = None if cutoff is None else float(cutoff)
        self.long_cutoff = None if long_cutoff is None else float(long_cutoff)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.workers = int(workers)
        self.members: list[_Member] = []
        for ds, idx, w, name in zip(dss, indices, weights, names):
            idx = np.arange(len(ds), dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(ds)):  # compiled copies do not check
                raise IndexError(f"{name}: structure index out of range for {len(ds)} structures")
            sizes = molecule_sizes(ds, idx, self.cutoff, long_cutoff=self.long_cutoff)
            self.members.append(_Member(name, ds, idx, sizes, w, {}))
        common = set.intersection(*(set(m.ds.fields) for m in self.members))
        self.fields = tuple(f for f in self.members[0].ds.fields if f in common) if fields is None else tuple(fields)
        for m in self.members:
            m.views.update({f: np.asarray(m.ds.arrays[f]) for f in self.fields})
            m.views["offsets"] = np.asarray(m.ds.offsets)
        if budgets is None:
            sizes = np.concatenate([m.sizes for m in self.members])
            budgets = derive_budgets(sizes, None if batch_atoms is not None else batch_size, n_shapes, self.seed,
                                     batch_atoms=batch_atoms)
        self.budgets = sorted(budgets, reverse=True)

    # -- planning
    def _visits(self, member: _Member, rng: np.random.Generator) -> np.ndarray:
        n = member.indices.shape[0]
        whole, frac = divmod(member.weight, 1.0)
        parts = [np.arange(n)] * int(whole)
        if frac > 0:
            parts.append(np.sort(rng.choice(n, size=int(round(frac * n)), replace=False)))
        order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return rng.permutation(order) if self.shuffle else order

    def plan(self, epoch: int = 0) -> list[tuple[int, np.ndarray, int]]:
        """``(dataset number, molecule positions, shape id)`` of every batch of ``epoch``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        batches = []
        for k, m in enumerate(self.members):
            order = self._visits(m, rng)
            if order.size == 0:
                continue
            p: BatchPlan = plan_epoch(m.sizes, self.budgets, order)
            batches += [(k, p.batch(b), int(p.shape_ids[b])) for b in range(len(p))]
        if self.shuffle and len(self.members) > 1:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return len(self.plan(0))

    # -- assembling
    def assemble(self, k: int, positions: np.ndarray, shape_id: int) -> GraphBatch:
        """One padded batch of the molecules ``positions`` of dataset ``k`` (numpy arrays, in
        the padding convention of :mod:`mmlwf.batch`: the last graph and atom are padding)."""
        m = self.members[k]
        b = self.budgets[shape_id]
        ds, src = m.ds, m.views
        mol = np.sort(m.indices[positions])  # ascending rows: sequential reads of the maps
        n_mol = mol.shape[0]
        out: dict[str, np.ndarray] = {}
        for name in ("Z", "R", "F", "q"):
            if name in src:
                out[name] = np.zeros((b.n_atoms, *src[name].shape[1:]), src[name].dtype)
        for name in ("E", "Qtot", "D"):
            if name in src:
                out[name] = np.zeros((b.n_graphs, *src[name].shape[1:]), src[name].dtype)
        out["atom_graph"] = np.full(b.n_atoms, b.n_graphs - 1, np.int32)
        out["atom_mask"] = np.zeros(b.n_atoms, bool)
        out["n_atoms"] = np.zeros(b.n_graphs, np.int32)
        out["graph_mask"] = np.zeros(b.n_graphs, bool)
        out["index"] = np.full(b.n_graphs, -1, np.int64)
        offsets = np.empty(n_mol + 1, np.int64)
        get = lambda d, name, empty: d.get(name, empty)  # noqa: E731
        n_at = fill_batch(
            mol, src["offsets"],
            src["Z"], src["R"], get(src, "F", _NO_ROWS3), get(src, "q", _NO_ROWS),
            get(src, "E", _NO_VALUES), get(src, "Qtot", _NO_VALUES), get(src, "D", _NO_ROWS3),
            out["Z"], out["R"], get(out, "F", _NO_ROWS3), get(out, "q", _NO_ROWS),
            get(out, "E", _NO_VALUES), get(out, "Qtot", _NO_VALUES), get(out, "D", _NO_ROWS3),
            out["atom_graph"], out["atom_mask"], offsets, out["n_atoms"], out["graph_mask"], out["index"],
        )
        if self.cutoff is None:  # no pairs: the same all-padding arrays for every batch (read-only)
            pairs = _no_pairs(b)
        else:
            pairs = _pair_list(out["R"][:n_at], offsets, self.cutoff, b.n_pairs, b.n_atoms)
        if self.long_cutoff is not None:
            out["long_pairs"] = _pair_list(out["R"][:n_at], offsets, self.long_cutoff, b.n_long_pairs, b.n_atoms)
        if b.n_grid and ds.grid_offsets is not None and "grid" in self.fields:
            self._assemble_grid(ds, mol, b, out)
        out["pairs"], out["dataset"], out["shape_id"] = pairs, np.int32(k), np.int32(shape_id)
        return from_fields(out)

    def _assemble_grid(self, ds: PackedDataset, mol: np.ndarray, b: Budget, out: dict) -> None:
        g0 = np.asarray(ds.grid_offsets[mol])
        gcount = np.asarray(ds.grid_offsets[mol + 1]) - g0
        goff = np.zeros(mol.shape[0] + 1, np.int64)
        np.cumsum(gcount, out=goff[1:])
        n_g = int(goff[-1])
        out["grid"] = np.zeros((b.n_grid, 3), np.float32)
        gather_rows(ds.arrays["grid"], g0, gcount, out["grid"])
        out["esp"] = np.zeros(b.n_grid, np.float32)
        gather_rows(ds.arrays["esp"], g0, gcount, out["esp"])
        out["grid_graph"] = np.full(b.n_grid, b.n_graphs - 1, np.int32)
        out["grid_graph"][:n_g] = np.repeat(np.arange(mol.shape[0], dtype=np.int32), gcount)
        out["grid_mask"] = np.zeros(b.n_grid, bool)
        out["grid_mask"][:n_g] = True

    # -- iterating
    def epoch(self, epoch: int = 0, *, device: bool = False) -> Iterator[GraphBatch]:
        """The batches of ``epoch`` in plan order, assembled up to ``prefetch`` ahead by
        ``workers`` background threads (the copies and neighbour lists release the GIL)."""
        batches = self.plan(epoch)
        put = None
        if device:
            import jax

            put = jax.device_put

        def make(spec):
            batch = self.assemble(*spec)
            return put(batch) if put is not None else batch

        if self.prefetch <= 0:
            for spec in batches:
                yield make(spec)
            return
        yield from _ordered_map(make, batches, self.prefetch, self.workers)

    def __iter__(self) -> Iterator[GraphBatch]:
        return self.epoch(0)


def _ordered_map(fn, items: Sequence, depth: int, workers: int) -> Iterator:
    """``fn`` over ``items`` in ``workers`` threads, at most ``depth`` results ahead, in order.

    An exception in ``fn`` re-raises in the consumer; leaving the loop early cancels the rest.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mmlwf-batch")
    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_NO_ROWS = np.zeros(0, np.float32)
_NO_ROWS3 = np.zeros((0, 3), np.float32)
_NO_VALUES = np.zeros(0, np.float64)


def _pair_list(R: np.ndarray, offsets: np.ndarray, cutoff: float, n_pairs: int, n_atoms: int) -> Pairs:
    """The pairs within ``cutoff`` (``math.inf``: all, ``Pairs.cutoff`` None) of the molecules
    at ``offsets`` in ``R``, padded to ``n_pairs`` with pairs of atom ``n_atoms - 1``."""
    pairs = padding_pairs(n_pairs, n_atoms, list_cutoff(cutoff))
    pairs.mask[: neighbour_pairs(R, offsets, cutoff, pairs.dst, pairs.src)] = True
    return pairs


@functools.lru_cache(maxsize=16)
def _no_pairs(budget: Budget) -> Pairs:
    pad = np.full(budget.n_pairs, budget.n_atoms - 1, np.int32)
    mask = np.zeros(budget.n_pairs, bool)
    for arr in (pad, mask):
        arr.flags.writeable = False
    return Pairs(pad, pad, mask)
