"""The typed graph batch that loaders, the calculator, prediction and the models share.

A batch holds the atoms of several molecules concatenated, directed pair lists ``src -> dst``
and masks for the padding. Shapes (every axis padded to a fixed budget): ``A`` atoms, ``P``
pairs, ``B`` graphs (molecules), ``G`` ESP grid points, ``P2`` long-range pairs.

Two pair lists: ``pairs`` for message passing (within the model's pair cutoff) and, for a
model whose kind asks for one (:meth:`mmlwf.models.registry.ModelKind.long_pair_cutoff`),
``long_pairs`` for long-range terms (Coulomb, dispersion): every ordered pair of each
molecule (cutoff ``math.inf``, ``Pairs.cutoff`` None) or those within a long-range cutoff.

Padding convention (the one every assembler follows; see :func:`empty` and
:func:`from_molecules`): real graphs, atoms, pairs and grid points come first. The last
graph (``B - 1``) and the last atom (``A - 1``) are always padding: padding atoms and padding
grid points belong to graph ``B - 1``; padding pairs of both lists point at atom ``A - 1``
(``dst = src = A - 1``). Padding entries hold ``Z = 0``, zeros and ``False`` masks. The models
mask every padding entry, so what padding slots hold never changes a real prediction.

:class:`GraphBatch` and :class:`Pairs` are ``NamedTuple`` s, hence jax pytrees without
importing jax (``jax.jit``, ``jax.device_put`` and ``jax.tree.map`` take them as they are);
optional fields are ``None``. For code written against the earlier dict batches a batch
also reads like a mapping of the flat names ``Z R dst src pair_mask atom_graph ...``
(:data:`KEYS`; the long-range list as ``long_dst long_src long_pair_mask``):
``batch["dst"]``, ``"F" in batch``, ``batch.get("Qtot")``, ``batch.keys()``,
``dict(batch)``; :func:`as_batch` turns such a dict back into a :class:`GraphBatch`. Iterating
a batch itself yields its fields, as for any tuple: loop over ``batch.keys()`` for the names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

Array = Any  # numpy or jax array
_tuple_item = tuple.__getitem__
_tuple_new = tuple.__new__


class Pairs(NamedTuple):
    """One directed pair list ``src -> dst`` over the atom rows of a batch.

    ``cutoff`` (Å, host-side) is how far the list reaches (None: every pair within a
    molecule, or unknown); :func:`device_fields` drops it.
    """

    dst: Array  # (P,) int32, receiving atom
    src: Array  # (P,) int32, sending atom
    mask: Array  # (P,) bool, False for padding pairs
    cutoff: float | None = None


class GraphBatch(NamedTuple):
    """A padded batch of molecular graphs (see the module docstring for the padding).

    ``pairs`` is the message-passing pair list; ``long_pairs`` a second, longer list
    (long-range terms such as Coulomb or dispersion), None unless the model asks for one.
    Targets (``E F D q esp``), the ESP grid and the host-side bookkeeping (``index``,
    ``dataset``, ``shape_id``) are None where a batch has none.
    """

    Z: Array  # (A,) int32 atomic numbers, 0 for padding
    R: Array  # (A, 3) float positions, Å
    atom_graph: Array  # (A,) int32 graph of each atom
    atom_mask: Array  # (A,) bool
    graph_mask: Array  # (B,) bool
    pairs: Pairs  # (P,) pair list within pairs.cutoff
    Qtot: Array | None = None  # (B,) total charge, e (None: neutral)
    n_atoms: Array | None = None  # (B,) int32 real atoms per graph
    long_pairs: Pairs | None = None  # (P2,) a longer-range pair list, or None
    # targets
    E: Array | None = None  # (B,) float64 energy, eV
    F: Array | None = None  # (A, 3) forces, eV/Å
    D: Array | None = None  # (B, 3) dipole, e·Å
    q: Array | None = None  # (A,) atomic charges, e
    E_target: Array | None = None  # (B,) float32 energy minus element references (training)
    # ESP grid
    grid: Array | None = None  # (G, 3) points, Å
    grid_graph: Array | None = None  # (G,) int32 graph of each point
    grid_mask: Array | None = None  # (G,) bool
    esp: Array | None = None  # (G,) potential, V
    # training only
    sample_weight: Array | None = None  # (M, B) float32 each ensemble member's weight of each graph (bootstrap)
    # host-side bookkeeping
    index: Array | None = None  # (B,) int64 structure index in its dataset, -1 for padding
    dataset: Array | None = None  # () int32 number of the dataset of a loader's mixture
    shape_id: Array | None = None  # () int32 the loader's batch shape

    # -- sizes
    @property
    def n_graphs(self) -> int:
        return int(np.shape(self.graph_mask)[0])

    @property
    def n_atom_slots(self) -> int:
        return int(np.shape(self.atom_mask)[0])

    # -- read access by the flat names of the dict batches
    def __getitem__(self, key):
        i = _FIELD_INDEX.get(key) if type(key) is str else None
        if i is not None:
            value = _tuple_item(self, i)
        elif type(key) is not str:
            return _tuple_item(self, key)
        else:
            value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default=None):
        """The array of flat name ``key`` (:data:`KEYS`), or ``default`` where it is None."""
        i = _FIELD_INDEX.get(key)
        if i is not None:
            value = tuple.__getitem__(self, i)
        else:
            at = _PAIR_INDEX.get(key)
            if at is None:
                return default
            pairs = tuple.__getitem__(self, at[0])
            value = None if pairs is None else tuple.__getitem__(pairs, at[1])
        return default if value is None else value

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def as_dict(self) -> dict[str, Array]:
        """The batch as a dict of flat names (:data:`KEYS`) for the fields that are set."""
        out = {}
        for key in KEYS:
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                out[key] = value
        return out

    def keys(self):
        return self.as_dict().keys()

    def items(self):
        return self.as_dict().items()

    def values(self):
        return self.as_dict().values()


_MISSING = object()
_FIELDS = frozenset(GraphBatch._fields) - {"pairs", "long_pairs"}
_FIELD_INDEX = {f: i for i, f in enumerate(GraphBatch._fields) if f in _FIELDS}
#: flat names of the two pair lists' fields: ``(pair list field, index in Pairs)``
_PAIR_KEYS = {"dst": "dst", "src": "src", "pair_mask": "mask", "pair_cutoff": "cutoff"}
_LONG_KEYS = {"long_dst": "dst", "long_src": "src", "long_pair_mask": "mask", "long_pair_cutoff": "cutoff"}
_PAIR_INDEX = {**{k: (GraphBatch._fields.index("pairs"), Pairs._fields.index(f)) for k, f in _PAIR_KEYS.items()},
               **{k: (GraphBatch._fields.index("long_pairs"), Pairs._fields.index(f)) for k, f in _LONG_KEYS.items()}}
#: the flat names a batch reads like (the dict batches' keys), in field order
KEYS: tuple[str, ...] = (("Z", "R", "dst", "src", "pair_mask", "pair_cutoff", "atom_graph", "atom_mask", "graph_mask",
                          "Qtot", "n_atoms") + tuple(_LONG_KEYS)
                         + tuple(f for f in GraphBatch._fields[GraphBatch._fields.index("long_pairs") + 1:]))
#: the model inputs of a batch, as named in a batch, in the order of the models' ``__call__``
MODEL_INPUTS = ("Z", "R", "dst", "src", "atom_graph", "atom_mask", "pair_mask", "graph_mask", "Qtot")
#: the long-range pair list's model inputs (keyword inputs, given only when a batch has one)
LONG_INPUTS = ("long_dst", "long_src", "long_pair_mask")
#: the ESP grid inputs of a batch
GRID_INPUTS = ("grid", "grid_graph", "grid_mask")
#: bookkeeping that stays on the host
HOST_FIELDS = ("index", "dataset", "shape_id")


def as_batch(batch: GraphBatch | Mapping[str, Array]) -> GraphBatch:
    """``batch`` as a :class:`GraphBatch`; a mapping of flat names (:data:`KEYS`) is converted.

    Raises KeyError naming a missing model input or an unknown name.
    """
    if isinstance(batch, GraphBatch):
        return batch
    needed = [k for k in MODEL_INPUTS if k != "Qtot"]
    missing = [k for k in needed if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing[0]!r} (needs {', '.join(needed)})")
    unknown = [k for k in batch if k not in KEYS]
    if unknown:
        raise KeyError(f"batch has an unknown field {unknown[0]!r} (known: {', '.join(KEYS)})")
    pairs = Pairs(batch["dst"], batch["src"], batch["pair_mask"], batch.get("pair_cutoff"))
    long = None
    if "long_dst" in batch:
        long = Pairs(batch["long_dst"], batch["long_src"], batch["long_pair_mask"], batch.get("long_pair_cutoff"))
    return GraphBatch(pairs=pairs, long_pairs=long, **{k: v for k, v in batch.items() if k in _FIELDS})


def from_fields(fields: Mapping[str, Any]) -> GraphBatch:
    """A :class:`GraphBatch` of a dict of its field names (``pairs`` a :class:`Pairs`; absent
    fields None), without checks: the loader's fast path."""
    return _tuple_new(GraphBatch, map(fields.get, GraphBatch._fields))


def device_fields(batch: GraphBatch) -> GraphBatch:
    """``batch`` without its host-side bookkeeping (``index``, ``dataset``, ``shape_id``, the
    pair lists' cutoffs): what a jitted step needs."""
    long = batch.long_pairs._replace(cutoff=None) if batch.long_pairs is not None else None
    return batch._replace(pairs=batch.pairs._replace(cutoff=None), long_pairs=long,
                          **dict.fromkeys(HOST_FIELDS))


# ----------------------------------------------------------------------------- assembly


def list_cutoff(cutoff: float | None) -> float | None:
    """The ``Pairs.cutoff`` of a list made within ``cutoff`` (``math.inf``: None, every pair)."""
    return None if cutoff is None or math.isinf(cutoff) else float(cutoff)


def padding_pairs(n_pairs: int, n_atoms: int, cutoff: float | None = None) -> Pairs:
    """A pair list of ``n_pairs`` padding pairs of atom ``n_atoms - 1``, to be filled in place."""
    pad = n_atoms - 1
    return Pairs(np.full(n_pairs, pad, np.int32), np.full(n_pairs, pad, np.int32), np.zeros(n_pairs, bool), cutoff)


def empty(n_graphs: int, n_atoms: int, n_pairs: int, n_grid: int = 0, *, dtype=np.float32,
          cutoff: float | None = None, n_long_pairs: int | None = None,
          long_cutoff: float | None = None) -> GraphBatch:
    """An all-padding batch of these sizes in the padding convention (``Qtot`` zeros, no
    targets; with ``n_grid`` an empty grid; with ``n_long_pairs`` a long-range pair list of
    that many padding pairs, reaching ``long_cutoff``), to be filled in place."""
    if n_graphs < 1 or n_atoms < 1:
        raise ValueError(f"a batch needs a padding graph and a padding atom, got {n_graphs} graphs, {n_atoms} atoms")
    pad_atom, pad_graph = n_atoms - 1, n_graphs - 1
    grid = {}
    if n_grid:
        grid = {"grid": np.zeros((n_grid, 3), dtype), "grid_graph": np.full(n_grid, pad_graph, np.int32),
                "grid_mask": np.zeros(n_grid, bool)}
    return GraphBatch(
        Z=np.zeros(n_atoms, np.int32), R=np.zeros((n_atoms, 3), dtype),
        atom_graph=np.full(n_atoms, pad_graph, np.int32), atom_mask=np.zeros(n_atoms, bool),
        graph_mask=np.zeros(n_graphs, bool),
        pairs=padding_pairs(n_pairs, n_atoms, cutoff),
        Qtot=np.zeros(n_graphs, dtype), n_atoms=np.zeros(n_graphs, np.int32), **grid,
        long_pairs=None if n_long_pairs is None else padding_pairs(n_long_pairs, n_atoms, list_cutoff(long_cutoff)),
    )


def within_molecules(counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(dst, src)`` of every ordered pair ``i != j`` within each molecule of ``counts``
    atoms, molecules one after another (dst-major)."""
    dst, src, start = [], [], 0
    for n in counts:
        i, j = np.nonzero(~np.eye(int(n), dtype=bool))
        dst.append(i + start)
        src.append(j + start)
        start += int(n)
    cat = lambda parts: np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)  # noqa: E731
    return cat(dst), cat(src)


def from_molecules(molecules: Sequence[Mapping], *, n_graphs: int, n_atoms: int, n_pairs: int, n_grid: int = 0,
                   pairs: tuple[np.ndarray, np.ndarray] | None = None, cutoff: float | None = None,
                   long_cutoff: float | None = None, n_long_pairs: int | None = None,
                   long_pairs: tuple[np.ndarray, np.ndarray] | None = None, dtype=np.float32) -> GraphBatch:
    """One padded batch of ``molecules`` (mappings with ``Z (n,)``, ``R (n, 3)`` Å and
    optionally ``Qtot`` e, ``grid (g, 3)`` Å), in the padding convention.

    Pairs: ``pairs = (dst, src)`` over the batch's atom rows as given; otherwise those within
    ``cutoff`` (the loader's neighbour list) or, with ``cutoff`` None, every ordered pair within
    each molecule. The long-range list ``long_pairs`` (None unless ``long_cutoff`` or
    ``long_pairs`` is given): ``long_pairs = (dst, src)`` as given, otherwise those within
    ``long_cutoff`` (``math.inf``: every ordered pair), in the loader's order; ``n_long_pairs``
    slots (default: as many as it has). Raises ValueError when the molecules do not fit the
    sizes (a padding graph and a padding atom are kept).
    """
    counts = [len(m["Z"]) for m in molecules]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_real, n_grid_real = int(offsets[-1]), sum(len(m.get("grid", ())) for m in molecules)
    if len(molecules) >= n_graphs or n_real >= n_atoms or n_grid_real > n_grid:
        raise ValueError(f"{len(molecules)} molecules of {n_real} atoms and {n_grid_real} grid points do not fit "
                         f"{n_graphs} graphs, {n_atoms} atoms and {n_grid} grid points with padding")
    b = empty(n_graphs, n_atoms, n_pairs, n_grid, dtype=dtype, cutoff=cutoff)
    g = 0
    for k, m in enumerate(molecules):
        a, e = offsets[k], offsets[k + 1]
        b.Z[a:e], b.R[a:e], b.atom_graph[a:e], b.atom_mask[a:e] = m["Z"], m["R"], k, True
        b.graph_mask[k], b.Qtot[k], b.n_atoms[k] = True, m.get("Qtot", 0.0), e - a
        grid = m.get("grid")
        if grid is not None and len(grid):
            b.grid[g:g + len(grid)], b.grid_graph[g:g + len(grid)], b.grid_mask[g:g + len(grid)] = grid, k, True
            g += len(grid)
    R = np.asarray(b.R[:n_real], np.float64)  # as the loader sees them (the batch's dtype)
    if pairs is None and cutoff is not None:
        from .batching.neighbours import neighbour_pairs

        pairs = neighbour_pairs(R, offsets, cutoff)
    if long_pairs is None and long_cutoff is not None:
        from .batching.neighbours import neighbour_pairs

        long_pairs = neighbour_pairs(R, offsets, long_cutoff)
    if long_pairs is not None:
        n_long = len(long_pairs[0]) if n_long_pairs is None else n_long_pairs
        b = b._replace(long_pairs=padding_pairs(n_long, n_atoms, list_cutoff(long_cutoff)))
    for p, ij, what in ((b.pairs, within_molecules(counts) if pairs is None else pairs, "pairs"),
                        (b.long_pairs, long_pairs, "long-range pairs")):
        if p is None:
            continue
        dst, src = ij
        if len(dst) > len(p.dst):
            raise ValueError(f"{len(dst)} {what} do not fit {len(p.dst)} slots")
        p.dst[: len(dst)], p.src[: len(dst)], p.mask[: len(dst)] = dst, src, True
    return b


def padding_like(batch: GraphBatch | Mapping) -> GraphBatch:
    """A batch of the shapes and dtypes of ``batch`` holding no molecule, in the padding
    convention: masks False, atom and grid graphs the last graph, pairs the last atom,
    everything else 0 (host-side bookkeeping as in an empty loader batch)."""
    b = as_batch(batch)
    pad_graph, pad_atom = b.n_graphs - 1, b.n_atom_slots - 1
    fills = {"atom_graph": pad_graph, "grid_graph": pad_graph, "index": -1}

    def pad(name, v):
        if v is None or isinstance(v, float):
            return v
        v = np.asarray(v)
        return np.full(v.shape, fills.get(name, 0), v.dtype)

    def pad_pairs(p):
        return None if p is None else Pairs(np.full(np.shape(p.dst), pad_atom, np.asarray(p.dst).dtype),
                                            np.full(np.shape(p.src), pad_atom, np.asarray(p.src).dtype),
                                            np.zeros(np.shape(p.mask), np.asarray(p.mask).dtype), p.cutoff)

    values = {f: pad(f, getattr(b, f)) for f in _FIELDS if f not in ("dataset", "shape_id")}
    return b._replace(pairs=pad_pairs(b.pairs), long_pairs=pad_pairs(b.long_pairs), **values)
