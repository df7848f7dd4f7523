"""The packed dataset format: what is on disk, field by field.

A packed dataset is a directory of flat arrays, one file per field, plus two JSON files.
With ``N`` molecules, ``A`` atoms in all and ``G`` ESP grid points in all:

=====================  ========  ==========  ===============  ================================
file                   dtype     shape       unit             content
=====================  ========  ==========  ===============  ================================
``offsets.npy``        int64     ``(N+1,)``                   atom rows of molecule ``i``:
                                                              ``offsets[i]:offsets[i+1]``
``n_atoms.npy``        int64     ``(N,)``                     ``diff(offsets)``
``E.f64``              float64   ``(N,)``    eV               energy (absent in ESP-only data)
``Qtot.f64``           float64   ``(N,)``    e                total charge
``D.f32``              float32   ``(N, 3)``  e·Å              dipole about the centroid (optional)
``Z_pack.int32``       int32     ``(A,)``                     atomic numbers, 1-118
``R_pack.f32``         float32   ``(A, 3)``  Å                positions
``F_pack.f32``         float32   ``(A, 3)``  eV/Å             forces (optional)
``q_pack.f32``         float32   ``(A,)``    e                atomic charges (optional)
``grid_offsets.npy``   int64     ``(N+1,)``                   grid rows of molecule ``i``
``grid_pack.f32``      float32   ``(G, 3)``  Å                ESP grid points (optional)
``esp_pack.f32``       float32   ``(G,)``    V                ESP at the grid points
=====================  ========  ==========  ===============  ================================

The ``.npy`` files are NumPy arrays (format 1.0); the others are raw C-order data in native
(little-endian) byte order without a header, so their sizes follow from the offsets: a file
of ``n`` rows of trailing shape ``t`` holds exactly ``n * prod(t) * itemsize`` bytes.
``offsets`` starts at 0 and increases strictly (no molecule without atoms);
``grid_offsets`` starts at 0 and never decreases (a molecule may have no grid points).
ESP-only datasets (converted from cubes or grids, which carry no energy) have no ``E``
file at all: never NaN placeholders. Every molecule of a dataset carries the same fields.
Required (:data:`REQUIRED`): ``offsets``, ``n_atoms``, ``Z``, ``R``; mmlwf always writes
``Qtot`` as well, and ``grid_offsets`` with the grid fields.

``manifest.json`` (:data:`MANIFEST`) describes the dataset: ``format`` (:data:`FORMAT_NAME`),
``format_version`` (:data:`FORMAT_VERSION`; newer versions are refused), ``mmlwf_version``,
``created``, the counts ``n_molecules``, ``n_atoms``, ``n_grid_points``, ``elements`` (the
atomic numbers present, ascending), ``units`` (the canonical units) and ``fields``: per
stored field its ``file``, ``dtype``, ``shape``, ``per`` (``molecule``, ``atom``, ``grid`` or
``offsets``), ``unit`` and ``sha256`` (SHA-256 of the array's data bytes, after the header
of a ``.npy`` file: :func:`array_checksum`), and the reference facts ``includes_dispersion``
(whether the energies include dispersion; absent = false) and ``dipole_reference`` (the point
``D`` is about: ``centroid``, :mod:`mmlwf.dipoles`; absent = as the source gave them). Writers
may add keys (e.g. the source).

``mmlwf-packed.json`` (:data:`MARKER`) marks a dataset mmlwf wrote and records its digest
(:mod:`mmlwf.integrity`): a dataset whose manifest is lost is then refused, not mistaken for
the legacy layout. Directories in this layout without manifest and marker (the layout users
already have) open as well, unverified: every known file present is a field.

How datasets are written (:mod:`.writer`), read (:mod:`.reader`) and checked (:mod:`.checks`)
lives beside this module; ``docs/architecture.md`` places the format in the data flow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ..constants import MAX_Z  # noqa: F401  (atomic numbers are 1..MAX_Z; re-exported)
from ..units import CANONICAL

FORMAT_NAME = "mmlwf-packed"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# written by PackedWriter beside the manifest: marks a dataset mmlwf wrote (see mmlwf.integrity)
MARKER = "mmlwf-packed.json"


@dataclass(frozen=True)
class FieldSpec:
    """One stored array: file name, dtype, what it is indexed by, trailing shape, unit."""

    name: str
    file: str
    dtype: str
    per: str  # "molecule", "atom", "grid", "offsets"
    trailing: tuple[int, ...] = ()
    unit: str | None = None

    @property
    def row_bytes(self) -> int:
        """Bytes per row: ``prod(trailing) * itemsize``."""
        return int(np.prod(self.trailing, dtype=np.int64)) * np.dtype(self.dtype).itemsize


FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec("offsets", "offsets.npy", "int64", "offsets"),
        FieldSpec("n_atoms", "n_atoms.npy", "int64", "molecule"),
        FieldSpec("E", "E.f64", "float64", "molecule", (), CANONICAL["energy"]),
        FieldSpec("Qtot", "Qtot.f64", "float64", "molecule", (), CANONICAL["charge"]),
        FieldSpec("D", "D.f32", "float32", "molecule", (3,), CANONICAL["dipole"]),
        FieldSpec("Z", "Z_pack.int32", "int32", "atom"),
        FieldSpec("R", "R_pack.f32", "float32", "atom", (3,), CANONICAL["length"]),
        FieldSpec("F", "F_pack.f32", "float32", "atom", (3,), CANONICAL["force"]),
        FieldSpec("q", "q_pack.f32", "float32", "atom", (), CANONICAL["charge"]),
        FieldSpec("grid_offsets", "grid_offsets.npy", "int64", "offsets"),
        FieldSpec("grid", "grid_pack.f32", "float32", "grid", (3,), CANONICAL["length"]),
        FieldSpec("esp", "esp_pack.f32", "float32", "grid", (), CANONICAL["esp"]),
    )
}
REQUIRED = ("offsets", "n_atoms", "Z", "R")
PER_MOLECULE = tuple(n for n, f in FIELDS.items() if f.per == "molecule")
PER_ATOM = tuple(n for n, f in FIELDS.items() if f.per == "atom")
PER_GRID = tuple(n for n, f in FIELDS.items() if f.per == "grid")


def sha256_file(path: str | os.PathLike, block: int = 1 << 22, stop=None, offset: int = 0) -> str | None:
    """SHA-256 of a file's bytes from ``offset``, read in blocks of ``block`` bytes into one
    buffer (memory: one block, whatever the file size). ``stop``: a :class:`threading.Event`
    that abandons the work (returns None) when set."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while n := fh.readinto(buf):
            h.update(view[:n])
            if stop is not None and stop.is_set():
                return None
    return h.hexdigest()


def array_checksum(arr: np.ndarray, block_rows: int = 1 << 20) -> str:
    """SHA-256 of an array's C-order data bytes (what the manifest records), blockwise."""
    h = hashlib.sha256()
    if arr.ndim == 0:
        return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    for start in range(0, max(arr.shape[0], 1), block_rows):
        h.update(np.ascontiguousarray(arr[start : start + block_rows]).tobytes())
    return h.hexdigest()
