"""``mmlwf convert``: several sources of any supported format into one packed dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import __version__
from .errors import DataError
from .io import open_source, parse_key_map
from .packed import PackedWriter, sha256_file


def convert(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    dipole_unit: str | None = None,
    keys: Mapping[str, str] | Iterable[str] | None = None,
    overwrite: bool = False,
    chunk_atoms: int = 1 << 20,
    progress: bool = False,
) -> Path:
    """Convert ``sources`` into the packed dataset directory ``out`` (canonical units).

    Units not given are the format's documented defaults (or what the file states). Any bad
    structure raises :class:`~mmlwf.errors.DataError` naming file, field and index, and
    leaves no output behind (``out`` is written to a temporary directory first).
    """
    if not sources:
        raise DataError("no source files given")
    key_map = parse_key_map(keys)
    # open every source before writing anything: a bad format/unit fails fast
    opened = []
    for path in sources:
        src = open_source(path, fmt, key_map)
        units = src.units.replace(energy=energy_unit, length=length_unit, dipole=dipole_unit)
        opened.append((src, units))
    records = []
    bar = _progress(progress)
    with PackedWriter(out, overwrite=overwrite, chunk_atoms=chunk_atoms) as writer:
        for src, units in opened:
            where = str(src.path)
            before = writer.n_molecules
            for s in src:
                writer.add(s.checked(where).to_canonical(units), where=where)
                if bar is not None:
                    bar.update(1)
            count = writer.n_molecules - before
            if count == 0:
                raise DataError("empty: no structures in this file", path=where)
            records.append(
                {
                    "path": where,
                    "name": src.path.name,
                    "sha256": sha256_file(src.path) if src.path.is_file() else None,
                    "format": src.format,
                    "units": units.as_dict(),
                    "n_molecules": count,
                    "first_index": before,
                }
            )
        writer.close(
            sources=records,
            converter={
                "mmlwf_version": __version__,
                "format": fmt,
                "energy_unit": energy_unit,
                "length_unit": length_unit,
                "dipole_unit": dipole_unit,
                "keys": key_map,
            },
        )
    if bar is not None:
        bar.close()
    return Path(out)


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" structures", mininterval=1.0, dynamic_ncols=True)
