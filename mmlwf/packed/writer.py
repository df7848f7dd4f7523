"""Writing a packed dataset: :class:`PackedWriter` streams structures in bounded memory.

The writer fills a temporary directory beside its output (:mod:`mmlwf.tempdirs`), appending
each field's rows to its file and checksum as chunks fill, and renames the directory into
place only when the manifest and marker are written: an interrupted or failed write leaves
the output as it was. The layout it writes is described in :mod:`.format`.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import __version__
from ..errors import DataError
from ..fileio import remove_path, writing
from ..structure import Structure, StructureBlock
from ..tempdirs import create_writer_dir, move_into_place, remove_stale_temporaries
from ..units import CANONICAL
from .format import FIELDS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, MAX_Z

# the writer's temporary per-structure count files (removed before the directory is renamed)
_COUNTS_FILES = {"atoms": ".n_atoms.tmp", "grid": ".n_grid.tmp"}


def _npy_header(fh, n: int) -> None:
    """The header :func:`numpy.save` writes for a 1-d int64 array of ``n`` entries."""
    np.lib.format.write_array_header_1_0(fh, {"descr": "<i8", "fortran_order": False, "shape": (n,)})


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
        self._elements = np.zeros(MAX_Z + 1, dtype=bool)
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
        if lo >= 0 and hi <= MAX_Z:
            self._elements |= np.bincount(Z, minlength=MAX_Z + 1) > 0
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
                from ..integrity import write_marker

                write_marker(self.tmp, manifest)
                move_into_place(self.tmp, self._lock, self.out, overwrite=self.overwrite)
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
