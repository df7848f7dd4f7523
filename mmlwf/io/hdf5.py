"""HDF5 sources: ANI-style groups and flat padded arrays, always read in slices.

* ANI-style: every group holding ``species``/``atomic_numbers`` ``(n_atoms,)`` (numbers
  or element symbols) and ``coordinates (n_conf, n_atoms, 3)`` with ``energies (n_conf,)``
  and optional ``forces``; groups may nest.
* Flat: ``R``/``Z``/``E`` (and aliases) padded arrays at the root, as in the NPZ reader.

Units default to eV and Å; a ``units`` (or ``unit``) attribute on the energy or
coordinate dataset overrides the default; ``--energy-unit``/``--length-unit`` override both.
Every dataset read must store the data its shape declares (:mod:`.bounds`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..structure import Structure, StructureBlock
from ..units import SourceUnits
from . import DEFAULT_UNITS, Source
from .bounds import check_stored
from .keys import resolve
from .padded import PaddedArrays, slice_length

_ANI_Z = ("species", "atomic_numbers", "numbers", "Z", "z")
_ANI_R = ("coordinates", "positions", "R")


class Hdf5Source(Source):
    format = "hdf5"

    def __init__(self, path, keys=None, chunk: int = 4096):
        super().__init__(path, keys)
        import h5py

        self.chunk = int(chunk)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise self.fail(f"not a readable HDF5 file ({exc})")
        self.file_size = self.path.stat().st_size
        with self._metadata_errors():
            self._layout()

    @contextmanager
    def _metadata_errors(self, index: int | None = None):
        """h5py's errors on a damaged file's metadata (object headers, B-trees, heaps) as the
        source's one-line error."""
        try:
            yield
        except DataError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, UnicodeError) as exc:
            detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise self.fail(f"corrupt HDF5 file ({detail})", index=index) from None

    def _layout(self) -> None:
        """Flat arrays at the root, or the ANI-style groups."""
        import h5py

        root_datasets = {k: v for k, v in self._h5.items() if isinstance(v, h5py.Dataset)}
        self.flat = resolve(root_datasets, "R", self.keys) is not None and resolve(root_datasets, "Z", self.keys) is not None
        if self.flat:
            self._padded = PaddedArrays(self, root_datasets, self.keys, chunk=self.chunk)
            for name in self._padded.key.values():
                if name is not None:
                    check_stored(self._h5[name], self, self.file_size, name)
            self._groups = []
        else:
            self._groups = self._find_groups()
            if not self._groups:
                raise self.fail(
                    "no structures: neither flat arrays (R, Z, E) at the root nor groups with "
                    "species/atomic_numbers and coordinates"
                )

    def _find_groups(self) -> list[str]:
        """Every group holding atomic numbers and positions, in the file's visiting order.

        Walks the object names (no h5py object per name: opening each one costs more than
        the rest of a conversion for files of many small groups)."""
        import h5py

        found = []
        root = list(self._h5.keys())
        if any(k in root for k in _ANI_Z) and any(k in root for k in _ANI_R):
            found.append("/")
        groups: list[str] = []  # every group, in visiting order
        has_z: set[str] = set()
        has_r: set[str] = set()

        def visit(name: bytes, info) -> None:
            name = name.decode("utf-8", "surrogateescape")
            if info.type == h5py.h5o.TYPE_GROUP:
                groups.append(name)
            parent, _, base = name.rpartition("/")
            if base in _ANI_Z:
                has_z.add(parent)
            if base in _ANI_R:
                has_r.add(parent)

        h5py.h5o.visit(self._h5.id, visit, info=True)
        found.extend(name for name in groups if name in has_z and name in has_r)
        return found

    def _group_key(self, group, canonical: str, names: list[str] | None = None) -> str | None:
        names = list(group.keys()) if names is None else names
        if canonical == "Z" and "Z" not in self.keys:
            return next((k for k in _ANI_Z if k in names), None)
        if canonical == "R" and "R" not in self.keys:
            return next((k for k in _ANI_R if k in names), None)
        return resolve(names, canonical, self.keys)

    @property
    def units(self) -> SourceUnits:
        with self._metadata_errors():
            return self._units()

    def _units(self) -> SourceUnits:
        units = DEFAULT_UNITS["hdf5"]
        if self.flat:
            e_ds = self._h5[self._padded.key["E"]]
            r_ds = self._h5[self._padded.key["R"]]
        else:
            g = self._h5[self._groups[0]]
            ek, rk = self._group_key(g, "E"), self._group_key(g, "R")
            e_ds = g[ek] if ek else None
            r_ds = g[rk] if rk else None
        found = {}
        for kind, ds in (("energy", e_ds), ("length", r_ds)):
            if ds is None:
                continue
            for attr in ("units", "unit"):
                if attr in ds.attrs:
                    value = ds.attrs[attr]
                    found[kind] = value.decode() if isinstance(value, bytes) else str(value)
        return units.replace(**found)

    def _group_slices(self) -> Iterator[tuple["_Group", int, int, int]]:
        """``(group, a, b, index of conformation a)`` for every slice of every group."""
        index = 0
        for gname in self._groups:
            with self._metadata_errors(index):
                grp = self._open_group(gname, index)
            step = slice_length(self.chunk, grp.Z.shape[0])
            for a in range(0, grp.n_conf, step):
                yield grp, a, min(a + step, grp.n_conf), index + a
            index += grp.n_conf

    def __iter__(self) -> Iterator[Structure]:
        if self.flat:
            yield from self._padded
            return
        for grp, a, b, start in self._group_slices():
            yield from grp.structures(*self._read(grp, a, b, start), start)

    def blocks(self) -> Iterator[StructureBlock]:
        """The structures as :class:`StructureBlock` s: ``chunk`` conformations of one group
        (fewer for large molecules: at most ``SLICE_ROWS`` atoms) or ``chunk`` frames of the
        flat layout at a time, from the same slices as :meth:`__iter__`."""
        if self.flat:
            yield from self._padded.blocks()
            return
        for grp, a, b, start in self._group_slices():
            yield grp.block(*self._read(grp, a, b, start), start)

    def _read(self, grp: "_Group", a: int, b: int, start: int):
        try:
            return grp.read(a, b)
        except OSError as exc:  # a chunk that cannot be read (corrupt, truncated file)
            raise self.fail(f"cannot read conformations {a}..{b - 1} of group '{grp.name}' ({exc})", index=start)

    def _open_group(self, gname: str, start: int) -> "_Group":
        """A group's datasets after the group-wide checks (shapes, energies present)."""
        import h5py

        g = self._h5[gname]
        names = list(g.keys())
        zkey, rkey, ekey = (self._group_key(g, c, names) for c in ("Z", "R", "E"))
        where = f"group '{gname}'"
        if ekey is None:
            raise self.fail(f"missing energies in {where} (use --key E=NAME)", field="E", index=start)
        opt = {c: self._group_key(g, c, names) for c in ("F", "D", "Qtot", "q")}
        objs = {}  # each object opened once: opening costs more than reading a small group
        for name in (zkey, rkey, ekey, *opt.values()):
            if name is not None and name not in objs:
                objs[name] = g[name]
                if not isinstance(objs[name], h5py.Dataset):
                    raise self.fail(f"a {type(objs[name]).__name__}, not a dataset", field=f"{gname}/{name}", index=start)
        check_stored(objs[zkey], self, self.file_size, f"{gname}/{zkey}", start)
        Z = _atomic_numbers(objs[zkey][()], self, f"{gname}/{zkey}", start)
        R = objs[rkey]
        n_conf = R.shape[0]
        if R.shape[1:] != (Z.shape[0], 3):
            raise self.fail(f"shape {R.shape} does not match {Z.shape[0]} atoms", field=f"{gname}/{rkey}", index=start)
        if opt["D"] is not None and tuple(objs[opt["D"]].shape) in ((n_conf,), (n_conf, 1)):
            self.dipole_magnitude(f"{gname}/{opt['D']}", objs[opt["D"]].shape)
            opt["D"] = None
        datasets = {ekey: objs[ekey], **{k: objs[k] for k in opt.values() if k is not None}}
        expected = {
            ekey: [(n_conf,), (n_conf, 1)],
            opt["F"]: [(n_conf, Z.shape[0], 3)],
            opt["D"]: [(n_conf, 3)],
            opt["Qtot"]: [(n_conf,), (n_conf, 1)],
            opt["q"]: [(n_conf, Z.shape[0])],
        }
        for name, shapes in expected.items():
            if name is not None and tuple(datasets[name].shape) not in shapes:
                raise self.fail(
                    f"wrong shape {datasets[name].shape}, expected {' or '.join(map(str, shapes))}",
                    field=f"{gname}/{name}",
                    index=start,
                )
        for name, ds in ((rkey, R), *datasets.items()):
            check_stored(ds, self, self.file_size, f"{gname}/{name}", start)
        return _Group(gname, Z, R, datasets[ekey], {c: (datasets[k] if k else None) for c, k in opt.items()}, n_conf)


class _Group:
    """One ANI-style group: shared atomic numbers and its open datasets, read in slices."""

    def __init__(self, name: str, Z, R, E, opt, n_conf: int) -> None:
        self.name, self.Z, self.R, self.E, self.opt, self.n_conf = name, Z, R, E, opt, n_conf

    def read(self, a: int, b: int):
        Rs = self.R[a:b]
        Es = self.E[a:b].reshape(b - a)
        parts = {c: (ds[a:b] if ds is not None else None) for c, ds in self.opt.items()}
        return Rs, Es, parts

    def structures(self, Rs, Es, parts, first: int) -> Iterator[Structure]:
        Z = self.Z
        for j in range(Rs.shape[0]):
            s = Structure(Z=Z, R=Rs[j], E=Es[j], index=first + j)
            if parts["F"] is not None:
                s.F = parts["F"][j]
            if parts["D"] is not None:
                s.D = parts["D"][j]
            if parts["Qtot"] is not None:
                s.Qtot = parts["Qtot"][j]
            if parts["q"] is not None:
                s.q = parts["q"][j]
            yield s

    def block(self, Rs, Es, parts, first: int) -> StructureBlock:
        n = self.Z.shape[0]
        k = Rs.shape[0]
        F, q, D, Q = parts["F"], parts["q"], parts["D"], parts["Qtot"]
        return StructureBlock(
            n_atoms=np.full(k, n, dtype=np.int64),
            Z=np.tile(self.Z, k),
            R=Rs.reshape(k * n, 3),
            E=Es,
            F=None if F is None else F.reshape(k * n, 3),
            q=None if q is None else q.reshape(k * n),
            D=D,
            Qtot=None if Q is None else Q.reshape(k),
            start=first,
            structures=lambda: self.structures(Rs, Es, parts, first),
        )


def _atomic_numbers(raw: np.ndarray, source: Source, field: str, index: int) -> np.ndarray:
    """Atomic numbers from numbers or element symbols (bytes or str)."""
    from ase.data import atomic_numbers

    arr = np.asarray(raw).reshape(-1)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int32)
    if arr.dtype.kind in "SUO":
        out = np.empty(arr.shape[0], np.int32)
        for k, sym in enumerate(arr):
            s = sym.decode() if isinstance(sym, bytes) else str(sym)
            if s not in atomic_numbers:
                raise source.fail(f"unknown element symbol '{s}' at atom {k}", field=field, index=index)
            out[k] = atomic_numbers[s]
        return out
    raise source.fail(f"atomic numbers of dtype {arr.dtype}", field=field, index=index)
