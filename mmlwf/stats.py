"""``mmlwf stats``: statistics of the training split that the models use.

Per-element reference energies by ridge-regularised least squares of the energies on the
element counts and the residual energy spread per atom (when the dataset has energies), force
RMS, ESP grid points per molecule and ESP RMS (when it has an ESP) and the atom-count
histogram. Computed from the training split only, streaming over the data in chunks.

Batch shapes are not statistics of the data: they belong to the loader. The training's
loaders count the neighbours of every structure within the model's pair cutoff and derive
their batch budgets from ``training.batch_size`` (:func:`mmlwf.training.data.make_loaders`),
so ``stats.json`` depends on the data and the split only (one stats file serves every model
and batch size trained on the dataset), and the neighbour counting over the split runs once,
in the loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from . import __version__
from .errors import DataError
from .fileio import atomic_write
from .integrity import check_made_from, dataset_digest
from .packed import MANIFEST, PackedDataset
from .constants import Z_TABLE_SIZE
from .split import load_split


def element_counts(ds: PackedDataset, indices: np.ndarray, elements: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``(len(indices), len(elements))`` atoms of each element per molecule."""
    lookup = _element_lookup(ds, elements)
    counts = np.zeros((indices.shape[0], elements.size), np.float64)
    for s in range(0, indices.shape[0], chunk):
        g = ds.gather(indices[s : s + chunk], fields=("Z",))
        mol = np.repeat(np.arange(g["n_atoms"].shape[0]), g["n_atoms"])
        np.add.at(counts[s : s + chunk], (mol, lookup(g["Z"])), 1.0)
    return counts


def _element_lookup(ds: PackedDataset, elements: np.ndarray):
    """Atomic numbers -> column in ``elements``; DataError for an element the dataset's
    element list (its manifest's) lacks."""
    table = np.full(Z_TABLE_SIZE, -1, np.int64)
    table[elements] = np.arange(elements.size)

    def lookup(Z: np.ndarray) -> np.ndarray:
        cols = table[Z]
        if np.any(cols < 0):
            z = int(Z[np.flatnonzero(cols < 0)[0]])
            raise DataError(f"atoms of Z = {z}, which the dataset's element list {elements.tolist()} lacks",
                            path=ds.path / MANIFEST, field="elements")
        return cols

    return lookup


def fit_element_energies(counts: np.ndarray, energies: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """Per-element energies ``e`` minimising ``|counts @ e - E|^2 + ridge * n * |e|^2``.

    The small ridge keeps the fit defined when compositions are collinear (a single molecule
    type: then only the sum over its composition is determined, and the ridge picks the
    minimum-norm split).
    """
    n = counts.shape[0]
    A = counts.T @ counts + ridge * max(n, 1) * np.eye(counts.shape[1])
    return np.linalg.solve(A, counts.T @ energies)


def compute_stats(
    dataset: str | os.PathLike,
    split: str | os.PathLike,
    *,
    ridge: float = 1e-8,
    chunk: int = 1 << 16,
) -> dict:
    """Statistics of the training subset of ``dataset`` (see module docstring); JSON-ready."""
    ds = PackedDataset(dataset)
    digest = dataset_digest(dataset)
    made = load_split(split, len(ds))
    check_made_from(split, made.dataset_digest, digest, dataset, "split")
    train = made.train
    elements = np.asarray(sorted({int(z) for z in ds.elements}), np.int64)
    n_atoms = np.asarray(ds.n_atoms[train])
    out: dict = {
        "mmlwf_version": __version__,
        "dataset": str(dataset),
        "dataset_digest": digest,
        "n_train": int(train.shape[0]),
        "units": {"energy": "eV", "force": "eV/Angstrom", "length": "Angstrom", "esp": "V"},
        "elements": [int(z) for z in elements],
        # ESP-only datasets (cube files) have no energies: no element energies then
        "element_energies": {},
        "element_energies_by_Z": {},
    }
    if "E" in ds.fields:
        counts = element_counts(ds, train, elements, chunk)
        E = np.asarray(ds.arrays["E"][train], np.float64)
        e_ref = fit_element_energies(counts, E, ridge)
        resid_per_atom = (E - counts @ e_ref) / n_atoms
        out.update({
            "element_energies": {chemical_symbols[z]: float(e) for z, e in zip(elements, e_ref)},
            "element_energies_by_Z": {str(int(z)): float(e) for z, e in zip(elements, e_ref)},
            "energy_residual_per_atom": {
                "mean": float(resid_per_atom.mean()),
                "std": float(resid_per_atom.std()),
                "rms": float(np.sqrt(np.mean(resid_per_atom**2))),
            },
            "energy": {"mean": float(E.mean()), "std": float(E.std())},
        })
    out.update({
        "n_atoms": {
            "min": int(n_atoms.min()),
            "max": int(n_atoms.max()),
            "mean": float(n_atoms.mean()),
            "histogram": {str(int(k)): int(v) for k, v in zip(*np.unique(n_atoms, return_counts=True))},
        },
    })
    if "F" in ds.fields:
        sq, n = 0.0, 0
        per_el_sq = np.zeros(elements.size)
        per_el_n = np.zeros(elements.size)
        lookup = _element_lookup(ds, elements)
        for s in range(0, train.shape[0], chunk):
            g = ds.gather(train[s : s + chunk], fields=("Z", "F"))
            F2 = np.square(g["F"].astype(np.float64)).sum(axis=1)
            sq += F2.sum()
            n += F2.shape[0]
            cols = lookup(g["Z"])
            np.add.at(per_el_sq, cols, F2)
            np.add.at(per_el_n, cols, 1)
        out["force_rms"] = float(np.sqrt(sq / (3 * n)))  # per Cartesian component
        out["force_rms_by_element"] = {
            chemical_symbols[z]: float(np.sqrt(q / (3 * c))) for z, q, c in zip(elements, per_el_sq, per_el_n) if c
        }
    if ds.grid_offsets is not None and "esp" in ds.fields:
        go = np.asarray(ds.grid_offsets)
        points = go[train + 1] - go[train]
        esp = np.asarray(ds.arrays["esp"], np.float64)
        sq = sum(float(np.square(esp[go[i]:go[i + 1]]).sum()) for i in train)
        out["esp"] = {"grid_points_per_molecule": {"mean": float(points.mean()), "max": int(points.max())},
                      "rms_V": float(np.sqrt(sq / max(int(points.sum()), 1)))}
    return out


def write_stats(stats: dict, out: str | os.PathLike) -> Path:
    with atomic_write(out) as fh:
        json.dump(stats, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return Path(out)


def load_stats(path: str | os.PathLike) -> dict:
    """A ``stats.json`` written by :func:`write_stats` (DataError when it is not one)."""
    try:
        with open(path) as fh:
            stats = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not a stats file: not valid JSON ({getattr(exc, 'msg', exc)})", path=path)
    except IsADirectoryError:
        raise DataError("a directory, not a stats file", path=path)
    if not isinstance(stats, dict):
        raise DataError(f"not a stats file: expected a JSON object, got {type(stats).__name__}", path=path)
    return stats
