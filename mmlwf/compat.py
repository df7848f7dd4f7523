"""The loader API existing scripts use, on top of :class:`~mmlwf.packed.PackedDataset`.

A bridge for scripts written against the packed-memmap loader of this field: same
constructor and ``batches()`` generator, padded per batch (one shape per batch size, so a
jitted function recompiles per new shape: use :class:`mmlwf.batching.BatchLoader` for
training). Batches are assembled without a per-molecule Python loop.

    loader = PackedMemmapLoader("packed/", batch_size=32)
    train, valid = split_loader(loader, train_fraction=0.9, seed=0)
    for batch in train.batches(physnet_format=True): ...

``physnet_format`` is this field's flat layout (each molecule keeps its ``A`` slots); for the
models of this package turn a batch into a :class:`~mmlwf.batch.GraphBatch` with
:func:`to_graph_batch`.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .batch import GraphBatch, empty, list_cutoff, padding_pairs
from .packed import PackedDataset


class PackedMemmapLoader:
    """Batches of a packed dataset padded to the largest molecule (or ``num_atoms``).

    Molecules are shuffled (``seed``), then sorted by size within buckets of ``bucket_size``
    so that each batch holds molecules of similar size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int,
        shuffle: bool = True,
        bucket_size: int = 8192,
        seed: int = 0,
        *,
        indices: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.ds = path if isinstance(path, PackedDataset) else PackedDataset(path)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.bucket_size = int(bucket_size)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.indices = np.arange(len(self.ds), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.n_atoms = np.asarray(self.ds.n_atoms)
        self.N = int(self.indices.shape[0])

    def __len__(self) -> int:
        return -(-self.N // self.batch_size)

    def _batch_indices(self) -> Iterator[np.ndarray]:
        idx = self.indices.copy()
        if self.shuffle:
            self.rng.shuffle(idx)
        for s in range(0, idx.shape[0], self.bucket_size):
            bucket = idx[s : s + self.bucket_size]
            bucket = bucket[np.argsort(self.n_atoms[bucket], kind="stable")]
            for t in range(0, bucket.shape[0], self.batch_size):
                yield bucket[t : t + self.batch_size]

    def batches(self, num_atoms: int | None = None, physnet_format: bool = False) -> Iterator[dict]:
        """Padded batches: ``Z (B,A)``, ``R (B,A,3)``, ``F (B,A,3)``, ``mask (B,A)``, ``E (B,)``,
        ``Qtot (B,)``; with ``physnet_format`` flat PhysNet fields instead (see :func:`to_physnet`)."""
        fields = [f for f in ("Z", "R", "F", "E", "Qtot", "D") if f in self.ds.fields]
        for idx in self._batch_indices():
            g = self.ds.gather(idx, fields=fields)
            counts = g["n_atoms"]
            width = int(counts.max()) if num_atoms is None else int(num_atoms)
            if counts.max() > width:
                raise ValueError(f"a molecule has {int(counts.max())} atoms, more than num_atoms={width}")
            B = idx.shape[0]
            mol = np.repeat(np.arange(B), counts)
            local = np.arange(mol.shape[0]) - np.repeat(g["offsets"][:-1], counts)
            batch = {
                "Z": np.zeros((B, width), np.int32),
                "R": np.zeros((B, width, 3), np.float32),
                "F": np.zeros((B, width, 3), np.float32),
                "mask": np.zeros((B, width), bool),
                "E": np.asarray(g["E"], np.float64) if "E" in g else np.zeros(B),
                "Qtot": np.asarray(g["Qtot"], np.float64) if "Qtot" in g else np.zeros(B),
            }
            batch["Z"][mol, local] = g["Z"]
            batch["R"][mol, local] = g["R"]
            if "F" in g:
                batch["F"][mol, local] = g["F"]
            batch["mask"][mol, local] = True
            if "D" in g:
                batch["D"] = np.asarray(g["D"])
            yield to_physnet(batch) if physnet_format else batch


def to_physnet(batch: dict) -> dict:
    """Flat PhysNet fields from a padded ``(B, A)`` batch.

    ``Z (B*A,)``, ``R (B*A,3)``, ``F (B*A,3)``, ``E (B,)``, ``N (B,)``, ``Qtot (B,)``;
    ``dst_idx``/``src_idx`` every ordered pair ``i != j`` within each molecule's ``A`` slots,
    offset by ``b*A`` for molecule ``b``; ``batch_segments (B*A,)`` molecule of each atom;
    ``atom_mask (B*A,)``; ``batch_mask`` pairs whose two atoms are both real.
    """
    B, A = batch["Z"].shape
    i, j = np.nonzero(~np.eye(A, dtype=bool))
    shift = (np.arange(B) * A)[:, None]
    dst = (i[None, :] + shift).reshape(-1).astype(np.int32)
    src = (j[None, :] + shift).reshape(-1).astype(np.int32)
    atom_mask = batch["mask"].reshape(-1)
    out = {
        "Z": batch["Z"].reshape(-1),
        "R": batch["R"].reshape(-1, 3),
        "F": batch["F"].reshape(-1, 3),
        "E": batch["E"],
        "N": batch["mask"].sum(axis=1).astype(np.int32),
        "Qtot": batch["Qtot"],
        "dst_idx": dst,
        "src_idx": src,
        "batch_segments": np.repeat(np.arange(B, dtype=np.int32), A),
        "atom_mask": atom_mask,
        "batch_mask": atom_mask[dst] & atom_mask[src],
    }
    if "D" in batch:
        out["D"] = batch["D"]
    return out


def to_graph_batch(batch: dict, *, long_cutoff: float | None = None) -> GraphBatch:
    """The typed batch (:mod:`mmlwf.batch`) of a padded ``(B, A)`` batch: real atoms first,
    every ordered pair within a molecule (as :func:`to_physnet`), and the padding of the one
    convention (an extra padding graph and atom); ``E``, ``F``, ``Qtot`` and ``D`` carried.
    ``long_cutoff`` (a model's ``long_pair_cutoff``; None: no list) adds the long-range pair
    list: the pairs within it, ``math.inf`` every ordered pair of each molecule.

    Sizes: ``B + 1`` graphs, ``sum(N) + 1`` atoms, ``sum(N (N - 1))`` pairs (and at most as
    many long-range pairs, exactly as many as it holds).
    """
    B, A = batch["Z"].shape
    mask = np.asarray(batch["mask"], bool)
    counts = mask.sum(axis=1)
    flat = to_physnet(batch)
    slot = np.cumsum(mask.reshape(-1)) - 1  # compact row of each real slot
    keep = flat["batch_mask"]
    n_real = int(counts.sum())
    out = empty(B + 1, n_real + 1, int(keep.sum()), dtype=np.asarray(batch["R"]).dtype)
    real = mask.reshape(-1)
    out.Z[:n_real], out.R[:n_real] = flat["Z"][real], flat["R"][real]
    out.atom_graph[:n_real] = flat["batch_segments"][real]
    out.atom_mask[:n_real] = True
    out.graph_mask[:B], out.n_atoms[:B], out.Qtot[:B] = True, counts, batch["Qtot"]
    out.pairs.dst[:], out.pairs.src[:] = slot[flat["dst_idx"][keep]], slot[flat["src_idx"][keep]]
    out.pairs.mask[:] = True
    if long_cutoff is not None:
        from .batching.neighbours import neighbour_pairs

        offsets = np.concatenate([[0], np.cumsum(counts)])
        dst, src = neighbour_pairs(np.asarray(out.R[:n_real], np.float64), offsets, long_cutoff)
        out = out._replace(long_pairs=padding_pairs(dst.shape[0], n_real + 1, list_cutoff(long_cutoff)))
        out.long_pairs.dst[:], out.long_pairs.src[:], out.long_pairs.mask[:] = dst, src, True
    E = np.zeros(B + 1, np.float64)
    E[:B] = batch["E"]
    F = np.zeros((n_real + 1, 3), np.asarray(batch["F"]).dtype)
    F[:n_real] = flat["F"][real]
    extra = {}
    if "D" in batch:
        extra["D"] = np.zeros((B + 1, 3), np.asarray(batch["D"]).dtype)
        extra["D"][:B] = batch["D"]
    return out._replace(E=E, F=F, **extra)


def split_loader(
    loader: PackedMemmapLoader, train_fraction: float = 0.9, seed: int | None = None
) -> tuple[PackedMemmapLoader, PackedMemmapLoader]:
    """Two loaders over disjoint random parts of ``loader``'s molecules (train, valid)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(loader.seed if seed is None else seed)
    perm = rng.permutation(loader.indices)
    cut = int(round(train_fraction * perm.shape[0]))
    make = lambda idx, shuffle: PackedMemmapLoader(  # noqa: E731
        loader.ds, loader.batch_size, shuffle, loader.bucket_size, loader.seed, indices=np.sort(idx)
    )
    return make(perm[:cut], loader.shuffle), make(perm[cut:], False)
