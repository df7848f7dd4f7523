"""``mmlwf stats``: statistics of the training split that the models use.

Per-element reference energies as the user chooses them (:mod:`mmlwf.element_energies`:
isolated-atom energies from a file or the config, or a least-squares fit on the element
counts), stored with their origin (``element_energies_source``), and the residual energy
spread per atom about them (when the dataset has energies), force RMS, ESP grid points per
molecule and ESP RMS (when it has an ESP) and the atom-count histogram. Computed from the
training split only, streaming over the data in chunks.

Batch shapes are not statistics of the data: they belong to the loader. The training's
loaders count the neighbours of every structure within the model's pair cutoff and derive
their batch budgets from ``training.batch_atoms`` (:func:`mmlwf.training.data.make_loaders`),
so ``stats.json`` depends on the data and the split only (one stats file serves every model
and batch size trained on the dataset), and the neighbour counting over the split runs once,
in the loader.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from . import __version__
from .element_energies import (AUTO, DEFAULT, DEFAULT_RIDGE, FIT, check_choice, covering, fit_element_energies,
                               fit_rank, source_record, symbols_to_z, undetermined_message)
from .errors import DataError
from .fileio import atomic_write
from .integrity import check_made_from, dataset_digest
from .packed import MANIFEST, PackedDataset
from .constants import Z_TABLE_SIZE
from .split import load_split

log = logging.getLogger(__name__)


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


def isolated_atom_energies(path: str | os.PathLike, fmt: str | None = None) -> dict[int, float]:
    """``{Z: eV}`` from a file of isolated atoms (any format ``mmlwf convert`` reads, in its
    default units): each structure one atom with an energy, one structure per element.
    A one-line DataError naming the file, field and structure index otherwise."""
    from .io import open_source

    src = open_source(path, fmt)
    where = str(src.path)
    energies: dict[int, float] = {}
    first: dict[int, int] = {}
    for s in src:
        s = s.checked(where).to_canonical(src.units)
        if s.n_atoms != 1:
            raise DataError(f"{s.n_atoms} atoms; an isolated-atom file holds one atom per "
                            "structure", path=where, field="Z", index=s.index)
        z = int(s.Z[0])
        if z in energies:
            raise DataError(f"element Z = {z} again (first at structure {first[z]}): give one "
                            "isolated atom per element", path=where, field="Z", index=s.index)
        energies[z], first[z] = float(s.E), s.index
    if not energies:
        raise DataError("empty: no isolated atoms in this file", path=where)
    return energies


def choose_element_energies(
    choice: str | os.PathLike | Mapping[str, float],
    elements: np.ndarray,
    counts: np.ndarray,
    energies: np.ndarray,
    *,
    ridge: float = DEFAULT_RIDGE,
    where: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict]:
    """``(e_ref (k,), element_energies_source)`` for the ``elements (k,)`` of the training
    data with element ``counts (n, k)`` and ``energies (n,)`` eV, by ``choice`` (see
    :mod:`mmlwf.element_energies`). ``fit`` on compositions that do not determine the
    references is a one-line DataError (naming ``where``, the dataset); ``auto`` warns and
    records ``determined: false``."""
    if isinstance(choice, os.PathLike):
        choice = os.fspath(choice)
    choice = check_choice(choice)
    if isinstance(choice, Mapping):
        table = covering(symbols_to_z(choice), elements, "config", field="stats.element_energies")
        return np.array([table[int(z)] for z in elements]), source_record("config")
    if choice not in (FIT, AUTO):
        from .packed import sha256_file

        if not Path(choice).is_file():
            raise DataError("isolated-atom energies: no such file", path=choice)
        table = covering(isolated_atom_energies(choice), elements, choice)
        return (np.array([table[int(z)] for z in elements]),
                source_record("isolated_atoms", file=str(choice), sha256=sha256_file(choice)))
    rank = fit_rank(counts)
    determined = rank == elements.size
    if not determined:
        if choice == FIT:
            raise DataError(f"element energies fit refused: {undetermined_message(rank, elements)}",
                            path=where, field="element_energies")
        log.warning("%s: element energies: %s. Using the fit's minimum-norm split (auto): the model's per-atom "
                    "energies and its totals for other compositions mean nothing", where,
                    undetermined_message(rank, elements))
    return (fit_element_energies(counts, energies, ridge),
            source_record("fit", requested=choice, ridge=float(ridge), rank=rank, n_elements=int(elements.size),
                          determined=determined))


def compute_stats(
    dataset: str | os.PathLike,
    split: str | os.PathLike,
    *,
    element_energies: str | os.PathLike | Mapping[str, float] = DEFAULT,
    ridge: float = DEFAULT_RIDGE,
    chunk: int = 1 << 16,
) -> dict:
    """Statistics of the training subset of ``dataset`` (see module docstring); JSON-ready.

    ``element_energies``: a file of isolated atoms, ``{symbol: eV}``, ``fit`` or ``auto``
    (:func:`choose_element_energies`); ``energy_residual_per_atom`` is about these references.
    """
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
        e_ref, source = choose_element_energies(element_energies, elements, counts, E, ridge=ridge, where=dataset)
        resid_per_atom = (E - counts @ e_ref) / n_atoms
        out.update({
            "element_energies": {chemical_symbols[z]: float(e) for z, e in zip(elements, e_ref)},
            "element_energies_by_Z": {str(int(z)): float(e) for z, e in zip(elements, e_ref)},
            "element_energies_source": source,
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
