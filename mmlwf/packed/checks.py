"""Is a directory a sound packed dataset? The manifest and the structural checks.

:func:`check_structure` reads the manifest, the offsets and the file sizes once and returns
either the :class:`Layout` it read (which :class:`~mmlwf.packed.PackedDataset` opens without
reading again) or every :class:`Problem` found, each classified where it is found
(:class:`ProblemKind`) with the structures concerned. :func:`structural_problems` and
:func:`read_manifest` give the same problems as :class:`~mmlwf.errors.DataError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from dataclasses import field as _field
from enum import StrEnum
from pathlib import Path

import numpy as np

from ..errors import DataError
from .format import FIELDS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, MARKER, MAX_Z, REQUIRED


class ProblemKind(StrEnum):
    """What kind of structural problem (the validation report's finding code)."""

    MISSING_FILE = "missing_file"  # a file the dataset needs is not there, or no directory
    MANIFEST = "manifest"  # manifest.json unreadable, malformed or contradicting the format
    OFFSETS = "offsets"  # offsets.npy, n_atoms.npy or grid_offsets.npy unreadable or inconsistent
    SIZE_MISMATCH = "size_mismatch"  # a file's size, or a manifest count, differs from the offsets


# A manifest's counts: a bad count of molecules or atoms is a size mismatch, a bad count of
# grid points a manifest problem (how validation reports have always classified them).
_COUNT_KIND = {
    "n_molecules": ProblemKind.SIZE_MISMATCH,
    "n_atoms": ProblemKind.SIZE_MISMATCH,
    "n_grid_points": ProblemKind.MANIFEST,
}


def _no_indices() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Problem:
    """One structural problem: its kind, the file (and field) concerned, a one-line message
    (without the file name) and the structures concerned, ascending (``(k,)``, often empty)."""

    kind: ProblemKind
    message: str
    path: Path
    field: str | None = None
    indices: np.ndarray = _field(default_factory=_no_indices)

    @property
    def index(self) -> int | None:
        """The first structure concerned, or None."""
        return int(self.indices[0]) if self.indices.size else None

    def error(self) -> DataError:
        """The problem as the one-line error a user sees (naming the first structure)."""
        return DataError(self.message, path=self.path, field=self.field, index=self.index)


@dataclass(frozen=True, eq=False)
class Layout:
    """What a clean :func:`check_structure` read: the manifest (None for the legacy layout),
    the fields whose files exist (manifest order), ``offsets (N+1,)``, ``n_atoms (N,)`` and
    ``grid_offsets (N+1,)`` or None."""

    root: Path
    manifest: dict | None
    fields: tuple[str, ...]
    offsets: np.ndarray
    n_atoms: np.ndarray
    grid_offsets: np.ndarray | None


# ----------------------------------------------------------------------------- manifest


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a packed directory, or None for the users' manifest-less layout.

    Raises :class:`DataError` naming the manifest (and key) when it is not a valid one.
    """
    manifest, problem = _read_manifest(Path(path))
    if problem is not None:
        raise problem.error()
    return manifest


def _read_manifest(root: Path) -> tuple[dict | None, Problem | None]:
    """``(manifest or None, the problem that makes it unusable or None)``."""
    mpath = root / MANIFEST

    def bad(message: str, key: str | None = None, kind: ProblemKind = ProblemKind.MANIFEST):
        return None, Problem(kind, message, mpath, key)

    if not mpath.exists():
        return None, None
    try:
        with open(mpath) as fh:
            manifest = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return bad(f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})")
    except OSError as exc:  # a directory, unreadable ...
        return bad(f"cannot be read ({exc.strerror or exc})")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fields"), dict):
        return bad("not a manifest (expected an object with 'fields')")
    if manifest.get("format") != FORMAT_NAME:
        return bad(f"unknown format {manifest.get('format')!r}", "format")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        return bad(f"format_version {version!r} is not an integer", "format_version")
    if version > FORMAT_VERSION:
        return bad(f"format version {version} is newer than this mmlwf reads ({FORMAT_VERSION})", "format_version")
    for key, kind in _COUNT_KIND.items():
        count = manifest.get(key, 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return bad(f"{count!r} is not a count (a non-negative integer)", key, kind)
    elements = manifest.get("elements", [])
    if not isinstance(elements, list) or not all(isinstance(z, int) and 1 <= z <= MAX_Z for z in elements):
        return bad(f"expected a list of atomic numbers, got {elements!r}"[:200], "elements")
    for name, entry in manifest["fields"].items():
        if not isinstance(entry, dict):
            return bad(f"expected an object describing the field, got {entry!r}", f"fields.{name}")
    return manifest, None


def present_fields(root: Path, manifest: dict | None) -> list[str]:
    """Fields whose files exist: those the manifest lists, else every known file present."""
    if manifest is not None:
        names = [n for n in manifest["fields"] if n in FIELDS]
        return [n for n in names if (root / FIELDS[n].file).exists()] + [
            n for n in REQUIRED if n not in names and (root / FIELDS[n].file).exists()
        ]
    return [n for n, spec in FIELDS.items() if (root / spec.file).exists()]


def _load_index(root: Path, name: str) -> tuple[np.ndarray | None, Problem | None]:
    """An offsets/counts ``.npy`` as a 1-d int64 array (memory-mapped when it is int64)."""
    path = root / FIELDS[name].file
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return None, Problem(ProblemKind.OFFSETS, f"unreadable or truncated .npy ({exc})", path, name)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        return None, Problem(ProblemKind.OFFSETS, f"expected a 1-d integer array, got {arr.dtype} {arr.shape}",
                             path, name)
    if arr.dtype != np.int64:  # users' files may hold int32: 8 bytes per molecule in memory
        arr = arr.astype(np.int64)
    return arr, None


# ----------------------------------------------------------------------------- structure


def structural_problems(path: str | os.PathLike) -> list[DataError]:
    """Every size/offset inconsistency of a packed directory (empty when it opens cleanly),
    as one-line errors (see :func:`check_structure`)."""
    return [p.error() for p in check_structure(path)[1]]


def check_structure(path: str | os.PathLike) -> tuple[Layout | None, list[Problem]]:
    """``(the layout, [])`` when the directory opens cleanly, else ``(None, problems)``.

    Checks: a readable manifest (when there is one; a dataset mmlwf wrote must have one),
    required files present, the files the manifest lists present with the format's dtypes,
    ``offsets`` starts at 0 and increases, ``n_atoms`` equals its differences, ``grid_offsets``
    starts at 0 and never decreases, the manifest's counts and every file's size agree with
    the offsets. Later checks run only when the earlier ones pass (their findings would be
    noise). May raise :class:`OSError` for a file that cannot be read at all.
    """
    root = Path(path)
    if not root.is_dir():
        return None, [Problem(ProblemKind.MISSING_FILE, "not a directory", root)]
    manifest, problem = _read_manifest(root)
    if problem is not None:
        return None, [problem]
    if manifest is None and (root / MARKER).exists():
        return None, [Problem(ProblemKind.MISSING_FILE, f"missing, but {MARKER} says mmlwf wrote this dataset: its "
                              "checksums are lost (convert the dataset again)", root / MANIFEST)]
    present = present_fields(root, manifest)
    problems = _file_problems(root, manifest, present)
    if problems:
        return None, problems
    offsets, problem = _load_index(root, "offsets")
    if problem is None:
        n_atoms, problem = _load_index(root, "n_atoms")
    if problem is not None:
        return None, [problem]
    problems = _offset_problems(root, offsets, n_atoms)
    if problems:  # sizes implied by broken offsets would only add noise
        return None, problems
    grid_offsets = None
    if "grid_offsets" in present:
        grid_offsets, problem = _load_index(root, "grid_offsets")
        if problem is not None:
            return None, [problem]
        if not _grid_offsets_ok(grid_offsets, n_atoms.shape[0]):
            problems.append(Problem(ProblemKind.OFFSETS, "grid offsets must have n_molecules + 1 non-decreasing "
                                    "entries from 0", root / FIELDS["grid_offsets"].file, "grid_offsets"))
            grid_offsets = None
    counts = {
        "molecule": n_atoms.shape[0],
        "atom": int(offsets[-1]),
        "grid": None if grid_offsets is None else int(grid_offsets[-1]),
    }
    if manifest is not None:
        for key, value in (("n_molecules", counts["molecule"]), ("n_atoms", counts["atom"]),
                           ("n_grid_points", counts["grid"] or 0)):
            if int(manifest.get(key, value)) != value:
                problems.append(Problem(_COUNT_KIND[key], f"manifest says {manifest[key]}, the offsets say {value}",
                                        root / MANIFEST, key))
    problems += _size_problems(root, present, counts)
    if problems:
        return None, problems
    return Layout(root, manifest, tuple(present), offsets, n_atoms, grid_offsets), []


def _file_problems(root: Path, manifest: dict | None, present: list[str]) -> list[Problem]:
    """Required files and the files the manifest lists: present, with the format's dtypes."""
    problems = [
        Problem(ProblemKind.MISSING_FILE, "required file missing", root / FIELDS[name].file, name)
        for name in REQUIRED
        if name not in present
    ]
    if manifest is None:
        return problems
    for name, entry in manifest["fields"].items():
        spec = FIELDS.get(name)
        if spec is None:
            continue
        if name not in present and name not in REQUIRED:
            problems.append(Problem(ProblemKind.MISSING_FILE, "listed in the manifest but missing",
                                    root / spec.file, name))
        if entry.get("dtype", spec.dtype) != spec.dtype:
            problems.append(Problem(ProblemKind.MANIFEST, f"manifest dtype {entry.get('dtype')!r}, the format "
                                    f"stores {spec.dtype}", root / MANIFEST, name))
    return problems


def _offset_problems(root: Path, offsets: np.ndarray, n_atoms: np.ndarray) -> list[Problem]:
    """``offsets (N+1,)``: from 0, increasing, with ``n_atoms (N,)`` as its differences."""
    off_path = root / FIELDS["offsets"].file
    N = n_atoms.shape[0]
    if offsets.shape[0] != N + 1:
        return [Problem(ProblemKind.OFFSETS, f"has {offsets.shape[0]} entries, expected n_molecules + 1 = {N + 1}",
                        off_path, "offsets")]
    problems = []
    if offsets[0] != 0:
        problems.append(Problem(ProblemKind.OFFSETS, f"first offset is {int(offsets[0])}, expected 0", off_path,
                                "offsets", np.zeros(1, dtype=np.int64)))
    steps = np.diff(offsets)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        problems.append(Problem(ProblemKind.OFFSETS, f"offsets not increasing (a structure with no atoms, or offsets "
                                f"out of order) at {bad.size} structure(s) (first {bad[:10].tolist()})", off_path,
                                "offsets", bad))
    mismatch = np.flatnonzero(steps != n_atoms)
    if mismatch.size:
        problems.append(Problem(ProblemKind.OFFSETS, f"n_atoms differs from the offsets at {mismatch.size} "
                                f"structure(s) (first {mismatch[:10].tolist()})", root / FIELDS["n_atoms"].file,
                                "n_atoms", mismatch))
    return problems


def _grid_offsets_ok(goff: np.ndarray, n_molecules: int) -> bool:
    return goff.shape[0] == n_molecules + 1 and goff[0] == 0 and not np.any(np.diff(goff) < 0)


def _size_problems(root: Path, present: list[str], counts: dict[str, int | None]) -> list[Problem]:
    """Each raw file holds exactly its rows: ``counts[per] * row_bytes`` bytes."""
    problems = []
    for name in present:
        spec = FIELDS[name]
        if spec.per == "offsets" or spec.file.endswith(".npy"):
            continue
        if counts[spec.per] is None:
            problems.append(Problem(ProblemKind.SIZE_MISMATCH, "per-grid-point file without grid_offsets.npy",
                                    root / spec.file, name))
            continue
        expected = counts[spec.per] * spec.row_bytes
        size = (root / spec.file).stat().st_size
        if size != expected:
            hint = "truncated" if size < expected else "too long"
            problems.append(Problem(ProblemKind.SIZE_MISMATCH, f"file is {size} bytes, expected {expected} "
                                    f"({counts[spec.per]} {spec.per} rows of {spec.row_bytes} bytes): {hint}",
                                    root / spec.file, name))
    return problems
