"""``mmlwf split``: reproducible train/valid/test index splits of a packed dataset.

The same dataset, sizes, seed and grouping give a byte-identical ``split.npz`` holding
sorted ``train``, ``valid`` and ``test`` index arrays plus the settings that made them.
``group_by="formula"`` keeps every conformer of one composition on one side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .constants import Z_TABLE_SIZE
from .fileio import save_npz_deterministic
from .integrity import dataset_digest
from .packed import PackedDataset
from .settings.data import DEFAULT_SPLIT, GROUP_BY

SUBSETS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """Index arrays of the three subsets (each sorted) and the settings that made them."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    n_molecules: int
    seed: int
    group_by: str
    dataset_digest: str | None = None  # of the dataset it was made from (None: older files)

    def __getitem__(self, subset: str) -> np.ndarray:
        if subset not in SUBSETS:
            raise KeyError(f"unknown subset '{subset}' (known: {', '.join(SUBSETS)})")
        return getattr(self, subset)

    def sizes(self) -> dict[str, int]:
        return {s: int(self[s].shape[0]) for s in SUBSETS}


def resolve_size(value: float, n: int, name: str) -> int:
    """A fraction (``0 <= value < 1``) of ``n`` or a count (whole number ``>= 1``)."""
    value = float(value)
    if value < 0 or not np.isfinite(value):
        raise ConfigError(f"--{name} must be a fraction in [0, 1) or a count >= 1, got {value}")
    if value < 1:
        return int(round(value * n))
    if value != int(value):
        raise ConfigError(f"--{name} {value}: a count must be a whole number (or give a fraction < 1)")
    return int(value)


def formula_groups(ds: PackedDataset, chunk: int = 1 << 18) -> np.ndarray:
    """Group id per molecule: molecules with the same composition share an id (vectorised)."""
    elements = np.asarray(ds.elements, dtype=np.int64)
    lookup = np.full(max(int(elements.max()) + 1, Z_TABLE_SIZE), -1, dtype=np.int64)
    lookup[elements] = np.arange(elements.size)
    counts = np.zeros((len(ds), elements.size), dtype=np.int32)
    Z = ds.arrays["Z"]
    for start in range(0, len(ds), chunk):
        stop = min(start + chunk, len(ds))
        a, b = int(ds.offsets[start]), int(ds.offsets[stop])
        mol = np.repeat(np.arange(start, stop), np.asarray(ds.n_atoms[start:stop]))
        np.add.at(counts, (mol, lookup[np.asarray(Z[a:b])]), 1)
    _, groups = np.unique(counts, axis=0, return_inverse=True)
    return groups.reshape(-1)


def make_split(
    n_molecules: int,
    *,
    valid: float,
    test: float,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays covering ``range(n_molecules)``.

    Without ``groups`` the molecules are permuted by ``seed`` and cut; with ``groups``
    whole groups are permuted and assigned to test, then valid, until each reaches its size.
    """
    n = int(n_molecules)
    n_valid, n_test = resolve_size(valid, n, "valid"), resolve_size(test, n, "test")
    if n_valid + n_test >= n:
        raise ConfigError(
            f"valid ({n_valid}) + test ({n_test}) leave no training structures out of {n}"
        )
    rng = np.random.default_rng(int(seed))
    if groups is None:
        order = rng.permutation(n)
        test_idx, valid_idx, train_idx = np.split(order, [n_test, n_test + n_valid])
    else:
        groups = np.asarray(groups)
        group_ids, sizes = np.unique(groups, return_counts=True)
        perm = rng.permutation(group_ids.size)
        sizes_p = sizes[perm]
        start = np.cumsum(sizes_p) - sizes_p  # molecules before each group in the permuted order
        to_test = start < n_test  # a prefix of the permuted groups, just reaching n_test
        to_valid = ~to_test & (start - sizes_p[to_test].sum() < n_valid)
        side = np.full(group_ids.size, 0)  # 0 train, 1 valid, 2 test
        side[perm[to_valid]] = 1
        side[perm[to_test]] = 2
        of_molecule = side[np.searchsorted(group_ids, groups)]
        train_idx, valid_idx, test_idx = (np.flatnonzero(of_molecule == k) for k in range(3))
        if train_idx.size == 0:
            raise ConfigError("grouping by formula leaves no training structures; use smaller valid/test")
    return {
        "train": np.sort(train_idx).astype(np.int64),
        "valid": np.sort(valid_idx).astype(np.int64),
        "test": np.sort(test_idx).astype(np.int64),
    }


def split_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    valid: float = DEFAULT_SPLIT.valid,
    test: float = DEFAULT_SPLIT.test,
    seed: int = DEFAULT_SPLIT.seed,
    group_by: str = DEFAULT_SPLIT.group_by,
) -> Split:
    """Split a packed dataset and write ``out`` (``.npz``) atomically and deterministically
    (the defaults: :data:`mmlwf.settings.DEFAULT_SPLIT`)."""
    if group_by not in GROUP_BY:
        raise ConfigError(f"--group-by '{group_by}': known are {', '.join(GROUP_BY)}")
    ds = PackedDataset(dataset)
    digest = dataset_digest(dataset)
    groups = formula_groups(ds) if group_by == "formula" else None
    parts = make_split(len(ds), valid=valid, test=test, seed=seed, groups=groups)
    save_npz_deterministic(
        out,
        {
            **parts,
            "n_molecules": np.int64(len(ds)),
            "seed": np.int64(seed),
            "group_by": np.str_(group_by),
            "valid_request": np.float64(valid),
            "test_request": np.float64(test),
            "dataset_digest": np.str_(digest),
        },
    )
    return Split(**parts, n_molecules=len(ds), seed=int(seed), group_by=group_by, dataset_digest=digest)


def load_split(path: str | os.PathLike, n_molecules: int | None = None) -> Split:
    """Read a split file; with ``n_molecules``, check that it belongs to a dataset that size."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {s: z[s] for s in SUBSETS}
            meta = (int(z["n_molecules"]), int(z["seed"]), str(z["group_by"]))
            digest = str(z["dataset_digest"]) if "dataset_digest" in z.files else None
    except KeyError as exc:
        raise DataError(f"not a split file (missing {exc})", path=path)
    except (ValueError, TypeError, OSError, EOFError) as exc:
        raise DataError(f"unreadable split file ({exc})", path=path)
    for s, idx in raw.items():
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise DataError(f"expected a 1-d array of integer indices, got {idx.dtype} {idx.shape}", path=path, field=s)
    parts = {s: idx.astype(np.int64) for s, idx in raw.items()}
    split = Split(**parts, n_molecules=meta[0], seed=meta[1], group_by=meta[2], dataset_digest=digest)
    if n_molecules is not None and split.n_molecules != int(n_molecules):
        raise DataError(
            f"made for a dataset of {split.n_molecules} structures, this one has {n_molecules}",
            path=path,
            field="n_molecules",
        )
    for s in SUBSETS:
        idx = split[s]
        if idx.size and (idx.min() < 0 or idx.max() >= split.n_molecules):
            raise DataError("index out of range", path=path, field=s)
    return split
