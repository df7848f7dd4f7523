"""``mmlwf convert``: several sources of any supported format into one packed dataset."""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from . import __version__
from .dipoles import DEFAULT_DIPOLE_REFERENCE, DIPOLE_REFERENCES, STORED_DIPOLE_REFERENCE, dipoles_about_centroid
from .errors import ConfigError, DataError

#: whether a source's energies include dispersion unless stated (or recorded by a packed source)
DEFAULT_DISPERSION = False

if TYPE_CHECKING:  # the readers and the writer are imported on use: the CLI imports this module to build its parser
    from .esp.points import PointSettings
    from .packed import PackedWriter


def _option(default, flag: str | None, help: str, **cli) -> Any:
    """A :class:`ConvertOptions` field; ``flag``/``help``/``cli`` make its ``mmlwf convert``
    option (``flag`` None: no option of its own)."""
    return field(default=default, metadata={"flag": flag, "help": help, **cli})


@dataclass(frozen=True)
class ConvertOptions:
    """How :func:`convert` reads its sources: ``convert()``'s keyword arguments, the options of
    ``mmlwf convert`` (made from these fields) and, for the workflow, a dataset's settings.

    Units left None are the format's documented defaults (or what the file states). The ESP
    fields apply to the formats ``cube``, ``esp-grid`` and ``dcmnet-npz``. ``dispersion`` and
    ``dipole_reference`` left None are what a packed source records, else
    :data:`DEFAULT_DISPERSION` and :data:`~mmlwf.dipoles.DEFAULT_DIPOLE_REFERENCE`.
    """

    fmt: str | None = _option(
        None, "--format", "npz, extxyz, ase (any ase.io format), db, hdf5, cube, esp-grid, dcmnet-npz "
        "(default: from the extension; .cube/.cub cube, .npy esp-grid, an .npz with esp + "
        "vdw_surface/esp_grid dcmnet-npz)", metavar="F")
    energy_unit: str | None = _option(None, "--energy-unit", "eV, meV, Hartree, kcal/mol, kJ/mol, Rydberg",
                                      metavar="U")
    length_unit: str | None = _option(None, "--length-unit", "Angstrom, Bohr, nm", metavar="U")
    dipole_unit: str | None = _option(None, "--dipole-unit", "e*Angstrom, Debye, e*Bohr", metavar="U")
    keys: Mapping[str, str] | Iterable[str] | None = _option(
        None, "--key", "map a canonical field (R Z N E F D Qtot q) to the source's name; repeatable",
        action="append", metavar="CANONICAL=SOURCE")
    dispersion: bool | None = _option(
        None, "--dispersion", "whether the reference energies include dispersion (D3, GFN2-xTB: yes; HF, plain "
        "DFT: no); recorded in the manifest. Default: no (a packed source: its record), since D3 added to a "
        "reference without dispersion gives a wrong long-range tail", action=argparse.BooleanOptionalAction)
    dipole_reference: str | None = _option(
        None, "--dipole-reference", f"the point the sources' dipoles are about ({', '.join(DIPOLE_REFERENCES)}); "
        f"they are stored about the centroid of the atoms, D_c = D_p - Qtot (c - p). Default: "
        f"{DEFAULT_DIPOLE_REFERENCE} (a packed source: its record)", choices=DIPOLE_REFERENCES, metavar="P")
    chunk_atoms: int = _option(1 << 20, "--chunk-atoms", "atoms buffered before each write (bounds memory)",
                               type=int, metavar="N")
    esp_unit: str | None = _option(None, "--esp-unit", "V, Hartree/e, kcal/mol/e (default Hartree/e for all three)",
                                   metavar="U", esp=True)
    density: Sequence[str | os.PathLike] | None = _option(
        None, "--density", "density cube of each potential cube, in the same order; repeatable",
        action="append", metavar="DENS.cube", esp=True)
    geometry: Sequence[str | os.PathLike] | None = _option(
        None, "--geometry", "geometry of each grid file (any ase.io format, Å), in order, or one for all; "
        "implies --format esp-grid; grids: 'x y z esp' text or .npy (G,4), or (G,3) with --esp-values",
        action="append", metavar="GEOM", esp=True)
    esp_values: Sequence[str | os.PathLike] | None = _option(
        None, "--esp-values", "ESP values of each x-y-z-only grid file", action="append", metavar="ESP", esp=True)
    points: "PointSettings | None" = _option(
        None, None, "ESP point selection of cubes (None: by density window with density cubes, else the vdW "
        "shell; see mmlwf.esp.points.PointSettings)")
    total_charge: float | None = _option(None, "--total-charge", "total charge of cube/grid structures (default 0)",
                                         type=float, metavar="Q", esp=True)


def convert(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **option_fields: Any,
) -> Path:
    """Convert ``sources`` into the packed dataset directory ``out`` (canonical units).

    ``options`` (or its fields as keyword arguments, which replace those of ``options``):
    see :class:`ConvertOptions`. Any bad structure raises :class:`~mmlwf.errors.DataError`
    naming file, field and index, and leaves no output behind (``out`` is written to a
    temporary directory first; ``overwrite`` replaces an existing ``out`` atomically).

    ESP sources: ``density`` gives one density cube per potential cube, in order;
    ``geometry`` one geometry per grid file (or one for all), which also makes ``esp-grid``
    the default format; ``esp_values`` the ESP files of grids stored as ``x y z`` only;
    ``total_charge`` the charge of cube/grid structures (default 0). Their structures carry
    no energy: such a dataset has no ``E`` field (the ESP-only layout).
    """
    from .io import detect_format, open_source, parse_key_map
    from .packed import PackedWriter

    o = replace(options or ConvertOptions(), **option_fields)
    fmt, energy_unit, length_unit, dipole_unit = o.fmt, o.energy_unit, o.length_unit, o.dipole_unit
    keys, chunk_atoms, esp_unit, points, total_charge = o.keys, o.chunk_atoms, o.esp_unit, o.points, o.total_charge
    density, geometry, esp_values = o.density, o.geometry, o.esp_values
    if not sources:
        raise DataError("no source files given")
    key_map = parse_key_map(keys)
    if fmt is None and geometry:
        fmt = "esp-grid"
    density_for = _per_source("--density", density, len(sources))
    geometry_for = _per_source("--geometry", geometry, len(sources), broadcast=True)
    values_for = _per_source("--esp-values", esp_values, len(sources))
    # open every source before writing anything: a bad format/unit fails fast
    opened = []
    for k, path in enumerate(sources):
        options = {"cube": dict(density=density_for[k], points=points, total_charge=total_charge or 0.0, index=k,
                                length_unit=length_unit),
                   "esp-grid": dict(geometry=geometry_for[k], esp_values=values_for[k],
                                    total_charge=total_charge or 0.0, length_unit=length_unit)}
        f = (fmt or detect_format(path)).lower()
        src = open_source(path, fmt, key_map, **options.get(f, {}))
        for given, flag, wanted in ((density_for[k], "--density", "cube"), (geometry_for[k], "--geometry", "esp-grid"),
                                    (values_for[k], "--esp-values", "esp-grid")):
            if given is not None and src.format != wanted:
                raise ConfigError(f"{flag} applies to {wanted} sources, not {src.path} (format {src.format})")
        units = src.units.replace(energy=energy_unit, length=length_unit, dipole=dipole_unit, esp=esp_unit)
        opened.append((src, units))
    includes_dispersion = _reference_fact(opened, "includes_dispersion", "--dispersion", o.dispersion,
                                          DEFAULT_DISPERSION)
    if o.dipole_reference is not None and o.dipole_reference not in DIPOLE_REFERENCES:
        raise ConfigError(f"dipole reference {o.dipole_reference!r} is not one of {', '.join(DIPOLE_REFERENCES)}")
    records = []
    bar = _progress(progress)
    # the sources' SHA-256 (a second read of each file) is computed beside the conversion
    hasher = _SourceHasher([src.path for src, _ in opened])
    try:
        with PackedWriter(out, overwrite=overwrite, chunk_atoms=chunk_atoms) as writer:
            for k, (src, units) in enumerate(opened):
                where = str(src.path)
                before = writer.n_molecules
                point = _reference_fact([(src, units)], "dipole_reference", "--dipole-reference", o.dipole_reference,
                                        DEFAULT_DIPOLE_REFERENCE)
                _convert_source(src, units, point, writer, where, bar)
                count = writer.n_molecules - before
                if count == 0:
                    raise DataError("empty: no structures in this file", path=where)
                records.append(
                    {
                        "path": where,
                        "name": src.path.name,
                        "sha256": hasher.result(k),
                        "format": src.format_name,
                        "units": units.as_dict(),
                        "n_molecules": count,
                        "first_index": before,
                        "dipole_reference": point,
                    }
                )
            writer.close(
                includes_dispersion=bool(includes_dispersion),
                dipole_reference=STORED_DIPOLE_REFERENCE,
                sources=records,
                converter={
                    "mmlwf_version": __version__,
                    "format": fmt,
                    "energy_unit": energy_unit,
                    "length_unit": length_unit,
                    "dipole_unit": dipole_unit,
                    "esp_unit": esp_unit,
                    "keys": key_map,
                    "dispersion": o.dispersion,
                    "dipole_reference": o.dipole_reference,
                    **_esp_settings(density, geometry, esp_values, points, total_charge),
                },
            )
    finally:
        hasher.close()
    if bar is not None:
        bar.close()
    return Path(out)


def _reference_fact(opened, key: str, flag: str, given, default):
    """The value of a reference fact (``includes_dispersion``, ``dipole_reference``) for the
    ``opened`` sources: ``given`` (the option) unless None, else what the sources record (they
    must agree), else ``default``. ConfigError when a source's record contradicts ``given``."""
    recorded = {str(src.path): src.recorded[key] for src, _ in opened if key in src.recorded}
    for path, value in recorded.items():
        if given is not None and value != given:
            raise ConfigError(f"{flag} {given} contradicts {path}, which records {key} = {value}")
    if given is not None:
        return given
    values = set(recorded.values())
    if len(values) > 1:
        raise ConfigError(f"the sources disagree on {key} ({recorded}); convert them separately")
    if values and len(recorded) < len(opened):
        raise ConfigError(f"{', '.join(recorded)} record(s) {key} = {values.pop()} and the other sources do not: "
                          f"state it with {flag}")
    return values.pop() if values else default


def _with_centroid_dipoles(s, point: str):
    """A canonical structure or block with its dipoles moved from ``point`` to the centroid
    (:func:`~mmlwf.dipoles.dipoles_about_centroid`; the same arithmetic for both, so that the
    bytes stored do not depend on the path)."""
    import numpy as np

    from .structure import Structure

    if s.D is None or point == STORED_DIPOLE_REFERENCE:
        return s
    if isinstance(s, Structure):
        s.D = dipoles_about_centroid(s.D[None], np.array([s.Qtot], np.float64), s.Z, s.R,
                                     np.array([s.n_atoms]), point)[0]
    else:
        s.D = dipoles_about_centroid(s.D, s.Qtot, s.Z, s.R, s.n_atoms, point)
    return s


def _convert_source(src, units, point: str, writer: PackedWriter, where: str, bar) -> None:
    """Check, convert (units, dipoles about the centroid from ``point``) and append every
    structure of ``src``.

    Readers of array formats hand out blocks of structures: a block whose structures all
    pass the checks goes to the writer at once; any other block goes structure by structure
    (``Structure.checked``), which raises the error naming file, field and structure index
    exactly as if there were no blocks. The bytes written are the same either way.
    """
    blocks = src.blocks()
    if blocks is None:
        for s in src:
            s = s.checked(where, require_energy=src.requires_energy).to_canonical(units)
            writer.add(_with_centroid_dipoles(s, point), where=where)
            if bar is not None:
                bar.update(1)
        return
    for block in blocks:
        if block.is_clean():
            writer.add_block(_with_centroid_dipoles(block.to_canonical(units), point), where=where)
            n = len(block)
        else:
            n = 0
            for s in block.structures():
                writer.add(_with_centroid_dipoles(s.checked(where).to_canonical(units), point), where=where)
                n += 1
        if bar is not None:
            bar.update(n)


def _per_source(flag: str, paths, n: int, broadcast: bool = False) -> list:
    """``paths`` matched to ``n`` sources in order (None each when not given)."""
    if not paths:
        return [None] * n
    if broadcast and len(paths) == 1:
        return list(paths) * n
    if len(paths) != n:
        raise ConfigError(f"{flag} given {len(paths)} time(s) for {n} source(s): give one per source, in order")
    return list(paths)


def _esp_settings(density, geometry, esp_values, points, total_charge) -> dict:
    """The ESP options for the manifest (only those given)."""
    out = {}
    for name, paths in (("density", density), ("geometry", geometry), ("esp_values", esp_values)):
        if paths:
            out[name] = [str(p) for p in paths]
    if points is not None:
        out["points"] = points.as_dict()
    if total_charge is not None:
        out["total_charge"] = float(total_charge)
    return out


class _SourceHasher:
    """SHA-256 of the source files, read block by block in one background thread (hashlib
    and file reads release the GIL), so that the conversion does not wait for it."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = [Path(p) for p in paths]
        self._results: dict[int, str | None | BaseException] = {}
        self._done = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmlwf-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .packed import sha256_file

        for k, path in enumerate(self._paths):
            try:
                value = sha256_file(path, stop=self._stop) if path.is_file() else None
            except BaseException as exc:  # handed to the caller of result()
                value = exc
            with self._done:
                self._results[k] = value
                self._done.notify_all()
            if self._stop.is_set():
                return

    def result(self, k: int) -> str | None:
        with self._done:
            self._done.wait_for(lambda: k in self._results)
            value = self._results[k]
        if isinstance(value, BaseException):
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" structures", mininterval=1.0, dynamic_ncols=True)
