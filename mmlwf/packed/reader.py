"""Reading a packed dataset: :class:`PackedDataset` memory-maps the arrays of a checked directory.

Opening runs the structural checks (:func:`~.checks.check_structure`) once and maps the
arrays they describe; rows are read only when accessed (``ds[i]``, :meth:`PackedDataset.gather`).
The layout is described in :mod:`.format`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .checks import Layout, check_structure
from .format import FIELDS


class PackedDataset:
    """Memory-mapped view of a packed dataset directory.

    ``len(ds)`` molecules; ``ds[i]`` a dict of arrays; ``ds.atoms(i)`` an :class:`ase.Atoms`
    with energy and forces attached; ``ds.gather(indices)`` the concatenated rows of many
    molecules at once (no per-molecule Python loop).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        layout, problems = check_structure(path)
        if problems:
            raise problems[0].error()
        self._open(layout)

    @classmethod
    def from_layout(cls, layout: Layout) -> "PackedDataset":
        """Open the directory a clean :func:`~.checks.check_structure` described (no second check)."""
        ds = cls.__new__(cls)
        ds._open(layout)
        return ds

    def _open(self, layout: Layout) -> None:
        self.path = layout.root
        self.manifest = layout.manifest
        self.offsets = layout.offsets  # (N+1,)
        self.n_atoms = layout.n_atoms  # (N,)
        self.grid_offsets = layout.grid_offsets  # (N+1,) or None
        counts = {
            "molecule": len(self.n_atoms),
            "atom": int(self.offsets[-1]),
            "grid": None if self.grid_offsets is None else int(self.grid_offsets[-1]),
        }
        self.arrays: dict[str, np.ndarray] = {}
        for name in layout.fields:
            spec = FIELDS[name]
            if spec.per == "offsets" or name == "n_atoms":
                continue
            shape = (counts[spec.per], *spec.trailing)
            if shape[0] == 0:
                self.arrays[name] = np.zeros(shape, dtype=spec.dtype)
            else:
                self.arrays[name] = np.memmap(self.path / spec.file, dtype=spec.dtype, mode="r", shape=shape)

    # -- description
    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the stored data fields (besides the offsets and counts)."""
        return tuple(self.arrays)

    @property
    def n_molecules(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_atoms_total(self) -> int:
        return int(self.offsets[-1])

    @property
    def units(self) -> dict[str, str | None]:
        if self.manifest is not None:
            return {n: f.get("unit") for n, f in self.manifest["fields"].items() if n in self.arrays}
        return {n: FIELDS[n].unit for n in self.arrays}

    @property
    def elements(self) -> list[int]:
        if self.manifest is not None and "elements" in self.manifest:
            return list(self.manifest["elements"])
        return sorted(int(z) for z in np.unique(self.arrays["Z"]))

    @property
    def includes_dispersion(self) -> bool:
        """Whether the reference energies include dispersion (the manifest's
        ``includes_dispersion``; False for datasets that do not record it, the documented default)."""
        return bool((self.manifest or {}).get("includes_dispersion", False))

    @property
    def dipole_reference(self) -> str | None:
        """The point the stored dipoles ``D`` are about (``centroid`` for datasets written since it
        is recorded; None where the manifest does not say: they are stored as the source gave them)."""
        return (self.manifest or {}).get("dipole_reference")

    def __len__(self) -> int:
        return self.n_molecules

    # -- access
    def _check_index(self, i: int) -> int:
        n = self.n_molecules
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"structure index {i} out of range for {n} structures")
        return i

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = self._check_index(i)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out: dict[str, np.ndarray] = {"n_atoms": np.int64(b - a)}
        for name, arr in self.arrays.items():
            per = FIELDS[name].per
            if per == "molecule":
                out[name] = np.array(arr[i])
            elif per == "atom":
                out[name] = np.array(arr[a:b])
            else:
                g0, g1 = int(self.grid_offsets[i]), int(self.grid_offsets[i + 1])
                out[name] = np.array(arr[g0:g1])
        return out

    def atoms(self, i: int):
        """Structure ``i`` as :class:`ase.Atoms` (energy, forces, charges, dipole attached)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        row = self[i]
        atoms = Atoms(numbers=row["Z"], positions=row["R"].astype(np.float64))
        results = {}
        if "E" in row:
            results["energy"] = float(row["E"])
        if "F" in row:
            results["forces"] = row["F"].astype(np.float64)
        if "q" in row:
            results["charges"] = row["q"].astype(np.float64)
        if "D" in row:
            results["dipole"] = row["D"].astype(np.float64)
        atoms.info["charge"] = float(row.get("Qtot", 0.0))
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def gather(self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> dict:
        """Rows of many molecules: per-molecule arrays ``(k, ...)``, per-atom arrays
        concatenated ``(sum n_atoms, ...)`` with ``offsets (k+1,)``, and per-grid-point
        arrays with ``grid_offsets (k+1,)``. Only the pages holding these rows are read."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_molecules or idx.max() >= self.n_molecules):
            raise IndexError(f"structure index out of range for {self.n_molecules} structures")
        idx = np.where(idx < 0, idx + self.n_molecules, idx)
        wanted = self.fields if fields is None else tuple(fields)
        counts = np.asarray(self.n_atoms[idx])
        out: dict[str, np.ndarray] = {"index": idx, "n_atoms": counts}
        out["offsets"], atom_rows = _rows(np.asarray(self.offsets[idx]), counts)
        if self.grid_offsets is not None and any(FIELDS[n].per == "grid" for n in wanted):
            gstart = np.asarray(self.grid_offsets[idx])
            gcount = np.asarray(self.grid_offsets[idx + 1]) - gstart
            out["grid_offsets"], grid_rows = _rows(gstart, gcount)
        for name in wanted:
            per = FIELDS[name].per
            arr = self.arrays[name]
            if per == "molecule":
                out[name] = arr[idx]
            elif per == "atom":
                out[name] = arr[atom_rows]
            else:
                out[name] = arr[grid_rows]
        return out


def _rows(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New offsets and the flat row indices of ``counts[k]`` rows from each ``starts[k]``."""
    new_offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    rows = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1] - starts, counts)
    return new_offsets, rows
