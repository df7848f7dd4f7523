"""The packed dataset: a directory of flat binary arrays plus ``manifest.json``.

Layout (DESIGN §4): per molecule ``E.f64``, ``Qtot.f64``, optional ``D.f32 (N,3)``,
``n_atoms.npy``, ``offsets.npy (N+1)``; per atom ``Z_pack.int32``, ``R_pack.f32 (A,3)``,
optional ``F_pack.f32``, ``q_pack.f32``; per ESP grid point ``grid_offsets.npy (N+1)``,
``grid_pack.f32 (G,3)``, ``esp_pack.f32``. Directories in this layout without a manifest
(the layout users already have) open as well. ESP-only datasets (converted from cubes or
grids, which carry no energy) have no ``E`` field at all: never NaN placeholders.

:class:`PackedWriter` streams structures into a temporary directory in bounded memory and
renames it into place only when complete; :class:`PackedDataset` memory-maps the arrays.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import __version__
from .errors import DataError
from .fileio import remove_path, writing
from .structure import Structure, StructureBlock
from .tempdirs import create_writer_dir, release_writer_dir, remove_stale_temporaries
from .units import CANONICAL

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
# streamed fields in the order the writer fills them (n_atoms/offsets are written at the end)
_STREAMED = ("E", "Qtot", "D", "Z", "R", "F", "q", "grid", "esp")
# the writer's temporary per-structure count files (removed before the directory is renamed)
_COUNTS_FILES = {"atoms": ".n_atoms.tmp", "grid": ".n_grid.tmp"}
_MAX_Z = 118


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


def _npy_header(fh, n: int) -> None:
    """The header :func:`numpy.save` writes for a 1-d int64 array of ``n`` entries."""
    np.lib.format.write_array_header_1_0(fh, {"descr": "<i8", "fortran_order": False, "shape": (n,)})


def array_checksum(arr: np.ndarray, block_rows: int = 1 << 20) -> str:
    """SHA-256 of an array's C-order data bytes (what the manifest records), blockwise."""
    h = hashlib.sha256()
    if arr.ndim == 0:
        return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    for start in range(0, max(arr.shape[0], 1), block_rows):
        h.update(np.ascontiguousarray(arr[start : start + block_rows]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing


class PackedWriter:
    """Stream structures (canonical units) into a packed dataset directory.

    Use as a context manager: on success the temporary directory is renamed to ``out``;
    on any exception it is removed and ``out`` is untouched. Memory is bounded by
    ``chunk_atoms`` whatever the number of structures: the per-structure counts go to a
    temporary file at every flush as well, and ``n_atoms.npy``/``offsets.npy`` are written
    from it block by block at the end.

    :meth:`add` takes one :class:`Structure`; :meth:`add_block` a clean, canonical
    :class:`StructureBlock` of many (the fast path): both write the same bytes.
    """

    _COUNTS_BLOCK = 1 << 20  # entries per block when writing n_atoms/offsets at the end

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        chunk_atoms: int = 1 << 20,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out}: output exists (use --overwrite to replace it)")
        with writing(self.out):
            self.out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
            self.tmp, self._lock = create_writer_dir(self.out)
        self.overwrite = overwrite
        self.chunk_atoms = int(chunk_atoms)
        self.fields: tuple[str, ...] | None = None
        # per-structure values added since the last flush (add); blocks are written at once
        self._rows: dict[str, list] = {}
        self._row_atoms = array.array("q")
        self._row_grid = array.array("q")
        self._pending_atoms = 0
        self._files: dict[str, object] = {}
        self._hash: dict[str, "hashlib._Hash"] = {}
        self._elements = np.zeros(_MAX_Z + 1, dtype=bool)
        self._other_elements: set[int] = set()
        # counts of the flushed structures, in temporary files (8 bytes per structure on disk)
        try:
            with writing(self.out):
                self._counts = {"atoms": open(self.tmp / _COUNTS_FILES["atoms"], "wb", buffering=1 << 20)}
        except BaseException:
            self._counts = {}
            self.abort()
            raise
        self._n_molecules = 0
        self._n_atoms_total = 0
        self._closed = False

    # -- context manager
    def __enter__(self) -> "PackedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- adding data
    def _set_fields(self, fields: tuple[str, ...], where, index) -> None:
        if self.fields is None:
            self.fields = fields
            with writing(self.out):
                for name in fields:
                    self._files[name] = open(self.tmp / FIELDS[name].file, "wb", buffering=1 << 20)
                    self._hash[name] = hashlib.sha256()
                    self._rows[name] = []
                if "grid" in fields:
                    self._counts["grid"] = open(self.tmp / _COUNTS_FILES["grid"], "wb", buffering=1 << 20)
        elif fields != self.fields:
            extra = sorted(set(fields) - set(self.fields))
            missing = sorted(set(self.fields) - set(fields))
            name = (extra or missing)[0]
            what = "has" if extra else "lacks"
            raise DataError(
                f"{what} '{name}' unlike the structures before it (every structure of a "
                "dataset must carry the same fields)",
                path=where,
                field=name,
                index=index,
            )

    def add(self, s: Structure, *, where: str | None = None) -> None:
        """Append one checked structure in canonical units. A structure without energy
        (ESP-only data) is accepted when every structure of the dataset lacks one: ``E`` is
        then not stored at all (mixing raises DataError)."""
        present = s.present()
        if s.E is None and "grid" not in present:
            raise DataError("missing energy", path=where, field="E", index=s.index)
        energy = ("E",) if s.E is not None else ()
        self._set_fields(energy + ("Qtot", "Z", "R") + present, where, s.index)
        p = self._rows
        if energy:
            p["E"].append(np.float64(s.E))
        p["Qtot"].append(np.float64(s.Qtot))
        p["Z"].append(s.Z)
        p["R"].append(s.R)
        for name in present:
            p[name].append(getattr(s, name))
        n = s.n_atoms
        self._row_atoms.append(n)
        if s.grid is not None:
            self._row_grid.append(int(s.grid.shape[0]))
        self._pending_atoms += n + (0 if s.grid is None else s.grid.shape[0])
        if self._pending_atoms >= self.chunk_atoms:
            self.flush()

    def add_all(self, structures: Iterable[Structure], *, where: str | None = None) -> int:
        n = 0
        for s in structures:
            self.add(s, where=where)
            n += 1
        return n

    def add_block(self, block: StructureBlock, *, where: str | None = None) -> None:
        """Append a clean block (:meth:`StructureBlock.is_clean`) in canonical units
        (:meth:`StructureBlock.to_canonical`): the bytes written are those :meth:`add` writes
        for the same structures one by one."""
        if len(block) == 0:
            return
        if block.E is None:
            raise DataError("missing energy", path=where, field="E", index=block.start)
        present = block.present()
        self._set_fields(("E", "Qtot", "Z", "R") + present, where, block.start)
        self.flush()  # structures added one by one before this block go first
        qtot = block.Qtot if block.Qtot is not None else np.zeros(len(block))
        for name in self.fields:
            self._write(name, qtot if name == "Qtot" else getattr(block, name))
        self._write_counts("atoms", block.n_atoms)
        self._n_molecules += len(block)
        self._n_atoms_total += int(block.Z.shape[0])

    def flush(self) -> None:
        """Write pending structures to the temporary files."""
        if not self.fields or not self._row_atoms:
            return
        for name in self.fields:
            items = self._rows[name]
            spec = FIELDS[name]
            if spec.per == "molecule" and spec.trailing == ():
                block = np.asarray(items, dtype=spec.dtype)
            elif spec.per == "molecule":
                block = np.stack(items)
            else:
                block = np.concatenate(items)
            self._write(name, block)
            items.clear()
        counts = np.frombuffer(self._row_atoms, dtype=np.int64)
        self._write_counts("atoms", counts)
        self._n_molecules += counts.shape[0]
        self._n_atoms_total += int(counts.sum())
        self._row_atoms = array.array("q")
        if self._row_grid:
            grid = np.frombuffer(self._row_grid, dtype=np.int64)
            self._write_counts("grid", grid)
            self._row_grid = array.array("q")
        self._pending_atoms = 0

    def _write(self, name: str, values: np.ndarray) -> None:
        """Append rows to a field's file and checksum (in the field's stored dtype)."""
        data = np.ascontiguousarray(values, dtype=FIELDS[name].dtype)
        if name == "Z":
            self._note_elements(data)
        raw = data.reshape(-1).view(np.uint8)
        with writing(self.out):
            self._files[name].write(raw)
        self._hash[name].update(raw)

    def _write_counts(self, kind: str, counts: np.ndarray) -> None:
        with writing(self.out):
            self._counts[kind].write(np.ascontiguousarray(counts, dtype=np.int64).view(np.uint8))

    def _note_elements(self, Z: np.ndarray) -> None:
        if Z.size == 0:
            return
        lo, hi = int(Z.min()), int(Z.max())
        if lo >= 0 and hi <= _MAX_Z:
            self._elements |= np.bincount(Z, minlength=_MAX_Z + 1) > 0
        else:  # only for unchecked structures
            self._other_elements.update(np.unique(Z).tolist())

    @property
    def elements(self) -> list[int]:
        """Atomic numbers written so far (flushed structures)."""
        return sorted(set(np.flatnonzero(self._elements).tolist()) | self._other_elements)

    # -- finishing
    @property
    def n_molecules(self) -> int:
        return self._n_molecules + len(self._row_atoms)

    def close(self, **manifest_extra) -> Path:
        """Finish the files, write the manifest and move the directory into place."""
        if self._closed:
            return self.out
        try:
            if self.n_molecules == 0:
                raise DataError("no structures to write", path=str(self.out))
            self.flush()
            with writing(self.out):
                for fh in self._files.values():
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
                for fh in self._counts.values():
                    fh.close()
                manifest = self._manifest(manifest_extra)
                with open(self.tmp / MANIFEST, "w") as fh:
                    json.dump(manifest, fh, indent=2)
                    fh.write("\n")
                from .integrity import write_marker

                write_marker(self.tmp, manifest)
                self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.out

    def abort(self) -> None:
        """Remove the temporary directory; ``out`` is left as it was."""
        for fh in (*self._files.values(), *self._counts.values(), self._lock):
            try:
                fh.close()
            except Exception:  # a full disk fails the flush of what was buffered: it goes anyway
                pass
        remove_path(self.tmp)
        self._closed = True

    def _counts_to_npy(self, kind: str, counts_name: str | None, offsets_name: str) -> tuple[dict, int]:
        """Write the counts (as field ``counts_name``, unless None) and their running sum from
        0 (as ``offsets_name``) to .npy files, block by block from the temporary counts file;
        return their checksums (of the data bytes, as :func:`array_checksum`) and the total."""
        raw = self.tmp / _COUNTS_FILES[kind]
        n = raw.stat().st_size // 8
        outputs = []  # (name, file, hash, is_offsets)
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(open(raw, "rb"))
            for name, is_offsets in ((counts_name, False), (offsets_name, True)):
                if name is None:
                    continue
                fh = stack.enter_context(open(self.tmp / FIELDS[name].file, "wb", buffering=1 << 20))
                _npy_header(fh, n + 1 if is_offsets else n)
                outputs.append((name, fh, hashlib.sha256(), is_offsets))
            zero = np.zeros(1, dtype=np.int64).view(np.uint8)
            for _, fh, h, is_offsets in outputs:
                if is_offsets:
                    fh.write(zero)
                    h.update(zero)
            total = 0
            while True:
                counts = np.frombuffer(src.read(8 * self._COUNTS_BLOCK), dtype=np.int64)
                if counts.shape[0] == 0:
                    break
                offsets = np.cumsum(counts)
                offsets += total
                total = int(offsets[-1])
                for _, fh, h, is_offsets in outputs:
                    data = (offsets if is_offsets else counts).view(np.uint8)
                    fh.write(data)
                    h.update(data)
        raw.unlink()
        return {name: h.hexdigest() for name, _, h, _ in outputs}, total

    def _manifest(self, extra: dict) -> dict:
        N = self._n_molecules
        sums, A = self._counts_to_npy("atoms", "n_atoms", "offsets")
        assert A == self._n_atoms_total
        stored = ["offsets", "n_atoms", *self.fields]
        n_grid_total = 0
        if "grid" in self.fields:
            gsums, n_grid_total = self._counts_to_npy("grid", None, "grid_offsets")
            sums["grid_offsets"] = gsums["grid_offsets"]
            stored.insert(2, "grid_offsets")
        counts = {
            "molecule": N,
            "atom": A,
            "grid": n_grid_total,
            "offsets": N + 1,
        }
        fields = {}
        for name in stored:
            spec = FIELDS[name]
            fields[name] = {
                "file": spec.file,
                "dtype": spec.dtype,
                "shape": [counts[spec.per], *spec.trailing],
                "per": spec.per,
                "unit": spec.unit,
                "sha256": sums[name] if name in sums else self._hash[name].hexdigest(),
            }
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "mmlwf_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_molecules": counts["molecule"],
            "n_atoms": counts["atom"],
            "n_grid_points": n_grid_total,
            "elements": self.elements,
            "units": dict(CANONICAL),
            "fields": fields,
        }
        manifest.update(extra)
        return manifest

    def _move_into_place(self) -> None:
        release_writer_dir(self.tmp, self._lock)
        if self.out.exists() or self.out.is_symlink():
            if not self.overwrite:
                raise FileExistsError(f"{self.out}: output appeared while writing")
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.rename(self.out, old)
            os.rename(self.tmp, self.out)
            remove_path(old)  # a directory, or a regular file --overwrite replaces
        else:
            os.rename(self.tmp, self.out)


# ----------------------------------------------------------------------------- reading


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a packed directory, or None for the users' manifest-less layout."""
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        return None
    try:
        with open(mpath) as fh:
            manifest = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})", path=mpath)
    except OSError as exc:  # a directory, unreadable ...
        raise DataError(f"cannot be read ({exc.strerror or exc})", path=mpath)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fields"), dict):
        raise DataError("not a manifest (expected an object with 'fields')", path=mpath)
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"unknown format {manifest.get('format')!r}", path=mpath, field="format")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise DataError(f"format_version {version!r} is not an integer", path=mpath, field="format_version")
    if version > FORMAT_VERSION:
        raise DataError(
            f"format version {manifest['format_version']} is newer than this mmlwf reads "
            f"({FORMAT_VERSION})",
            path=mpath,
            field="format_version",
        )
    for key in ("n_molecules", "n_atoms", "n_grid_points"):
        count = manifest.get(key, 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DataError(f"{count!r} is not a count (a non-negative integer)", path=mpath, field=key)
    elements = manifest.get("elements", [])
    if not isinstance(elements, list) or not all(isinstance(z, int) and 1 <= z <= 118 for z in elements):
        raise DataError(f"expected a list of atomic numbers, got {elements!r}"[:200], path=mpath, field="elements")
    for name, entry in manifest["fields"].items():
        if not isinstance(entry, dict):
            raise DataError(f"expected an object describing the field, got {entry!r}", path=mpath, field=f"fields.{name}")
    return manifest


def _load_npy(path: Path, name: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"unreadable or truncated .npy ({exc})", path=path, field=name)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise DataError(f"expected a 1-d integer array, got {arr.dtype} {arr.shape}", path=path, field=name)
    if arr.dtype != np.int64:  # users' files may hold int32: 8 bytes per molecule in memory
        arr = arr.astype(np.int64)
    return arr


def structural_problems(path: str | os.PathLike) -> list[DataError]:
    """Every size/offset inconsistency of a packed directory (empty when it opens cleanly).

    Checks: required files present, ``offsets`` starts at 0 and increases, ``n_atoms`` equals
    its differences, every file's size equals what the offsets and the manifest imply.
    """
    root = Path(path)
    problems: list[DataError] = []
    if not root.is_dir():
        return [DataError("not a directory", path=root)]
    try:
        manifest = read_manifest(root)
    except DataError as exc:
        return [exc]
    if manifest is None and (root / MARKER).exists():
        return [DataError(f"missing, but {MARKER} says mmlwf wrote this dataset: its checksums are lost "
                          "(convert the dataset again)", path=root / MANIFEST)]
    present = _present_fields(root, manifest)
    for name in REQUIRED:
        if name not in present:
            problems.append(DataError("required file missing", path=root / FIELDS[name].file, field=name))
    if manifest is not None:
        for name, entry in manifest["fields"].items():
            spec = FIELDS.get(name)
            if spec is None:
                continue
            if name not in present and name not in REQUIRED:
                problems.append(DataError("listed in the manifest but missing", path=root / spec.file, field=name))
            if isinstance(entry, dict) and entry.get("dtype", spec.dtype) != spec.dtype:
                problems.append(DataError(f"manifest dtype {entry.get('dtype')!r}, the format stores {spec.dtype}",
                                          path=root / MANIFEST, field=name))
    if problems:
        return problems
    try:
        offsets = _load_npy(root / FIELDS["offsets"].file, "offsets")
        n_atoms = _load_npy(root / FIELDS["n_atoms"].file, "n_atoms")
    except DataError as exc:
        return [exc]
    off_path = root / FIELDS["offsets"].file
    N = n_atoms.shape[0]
    if offsets.shape[0] != N + 1:
        problems.append(
            DataError(f"has {offsets.shape[0]} entries, expected n_molecules + 1 = {N + 1}", path=off_path, field="offsets")
        )
        return problems
    if offsets[0] != 0:
        problems.append(DataError(f"first offset is {int(offsets[0])}, expected 0", path=off_path, field="offsets", index=0))
    steps = np.diff(offsets)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        problems.append(
            DataError(
                f"offsets not increasing (a structure with no atoms, or offsets out of order) at "
                f"{bad.size} structure(s) (first {bad[:10].tolist()})",
                path=off_path,
                field="offsets",
                index=int(bad[0]),
            )
        )
    mismatch = np.flatnonzero(steps != n_atoms)
    if mismatch.size:
        problems.append(
            DataError(
                f"n_atoms differs from the offsets at {mismatch.size} structure(s) (first {mismatch[:10].tolist()})",
                path=root / FIELDS["n_atoms"].file,
                field="n_atoms",
                index=int(mismatch[0]),
            )
        )
    if problems:  # sizes implied by broken offsets would only add noise
        return problems
    A = int(offsets[-1])
    G = None
    if "grid_offsets" in present:
        try:
            goff = _load_npy(root / FIELDS["grid_offsets"].file, "grid_offsets")
        except DataError as exc:
            return problems + [exc]
        if goff.shape[0] != N + 1 or goff[0] != 0 or np.any(np.diff(goff) < 0):
            problems.append(
                DataError("grid offsets must have n_molecules + 1 non-decreasing entries from 0",
                          path=root / FIELDS["grid_offsets"].file, field="grid_offsets")
            )
        else:
            G = int(goff[-1])
    if manifest is not None:
        for key, value in (("n_molecules", N), ("n_atoms", A), ("n_grid_points", G or 0)):
            if int(manifest.get(key, value)) != value:
                problems.append(
                    DataError(f"manifest says {manifest[key]}, the offsets say {value}", path=root / MANIFEST, field=key)
                )
    counts = {"molecule": N, "atom": A, "grid": G}
    for name in present:
        spec = FIELDS[name]
        if spec.per == "offsets" or spec.file.endswith(".npy"):
            continue
        if counts[spec.per] is None:
            problems.append(DataError("per-grid-point file without grid_offsets.npy", path=root / spec.file, field=name))
            continue
        per_row = int(np.prod(spec.trailing, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        expected = counts[spec.per] * per_row
        size = (root / spec.file).stat().st_size
        if size != expected:
            hint = "truncated" if size < expected else "too long"
            problems.append(
                DataError(
                    f"file is {size} bytes, expected {expected} ({counts[spec.per]} {spec.per} rows "
                    f"of {per_row} bytes): {hint}",
                    path=root / spec.file,
                    field=name,
                )
            )
    return problems


def _present_fields(root: Path, manifest: dict | None) -> list[str]:
    """Fields whose files exist: those the manifest lists, else every known file present."""
    if manifest is not None:
        names = [n for n in manifest["fields"] if n in FIELDS]
        return [n for n in names if (root / FIELDS[n].file).exists()] + [
            n for n in REQUIRED if n not in names and (root / FIELDS[n].file).exists()
        ]
    return [n for n, spec in FIELDS.items() if (root / spec.file).exists()]


class PackedDataset:
    """Memory-mapped view of a packed dataset directory.

    ``len(ds)`` molecules; ``ds[i]`` a dict of arrays; ``ds.atoms(i)`` an :class:`ase.Atoms`
    with energy and forces attached; ``ds.gather(indices)`` the concatenated rows of many
    molecules at once (no per-molecule Python loop).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        problems = structural_problems(self.path)
        if problems:
            raise problems[0]
        self.manifest = read_manifest(self.path)
        names = _present_fields(self.path, self.manifest)
        if self.manifest is not None:
            missing = [n for n in self.manifest["fields"] if n in FIELDS and n not in names]
            if missing:
                n = missing[0]
                raise DataError("listed in the manifest but missing", path=self.path / FIELDS[n].file, field=n)
        self.offsets = _load_npy(self.path / FIELDS["offsets"].file, "offsets")
        self.n_atoms = _load_npy(self.path / FIELDS["n_atoms"].file, "n_atoms")
        self.grid_offsets = (
            _load_npy(self.path / FIELDS["grid_offsets"].file, "grid_offsets") if "grid_offsets" in names else None
        )
        counts = {
            "molecule": len(self.n_atoms),
            "atom": int(self.offsets[-1]),
            "grid": None if self.grid_offsets is None else int(self.grid_offsets[-1]),
        }
        self.arrays: dict[str, np.ndarray] = {}
        for name in names:
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
