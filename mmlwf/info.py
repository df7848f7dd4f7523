"""Summary of a packed dataset (``mmlwf info``): counts, elements, sizes, fields, sources."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from .constants import MAX_Z, Z_RANGE, Z_TABLE_SIZE
from .packed import FIELDS, PackedDataset

HISTOGRAM_ROWS = 20  # more distinct molecule sizes than this are shown in bins


def dataset_info(path: str | os.PathLike, *, chunk_atoms: int = 1 << 22) -> dict:
    """Describe a packed dataset as a JSON-serialisable dict.

    Keys: ``path``, ``legacy`` (True for a directory without ``manifest.json``), ``format``,
    ``format_version``, ``created``, ``n_molecules``, ``n_atoms``, ``n_grid_points``,
    ``elements`` (symbol -> number of atoms, by atomic number), ``atomic_numbers``,
    ``n_atoms_histogram`` (atoms per molecule -> molecules), ``n_atoms_min/max/mean``,
    ``fields`` (name -> file, dtype, shape, per, unit, bytes), ``sources`` and ``converter``
    (from the manifest; empty for a legacy directory). Raises
    :class:`~mmlwf.errors.DataError` when the directory does not open.
    """
    ds = PackedDataset(path)
    manifest = ds.manifest or {}
    N, A = ds.n_molecules, ds.n_atoms_total

    per_element = np.zeros(Z_TABLE_SIZE, dtype=np.int64)
    invalid_z = 0
    Z = ds.arrays["Z"]
    for start in range(0, A, max(int(chunk_atoms), 1)):
        block = np.asarray(Z[start : start + chunk_atoms])
        valid = (block >= 1) & (block <= MAX_Z)
        invalid_z += int(block.size - valid.sum())
        per_element += np.bincount(block[valid], minlength=Z_TABLE_SIZE)
    numbers = np.flatnonzero(per_element)
    sizes, counts = np.unique(np.asarray(ds.n_atoms), return_counts=True)

    fields: dict[str, dict] = {}
    stored = {"offsets": ds.offsets, "n_atoms": ds.n_atoms, "grid_offsets": ds.grid_offsets, **ds.arrays}
    units = ds.units
    for name, arr in stored.items():
        if arr is None:
            continue
        spec = FIELDS[name]
        file = Path(ds.path) / spec.file
        fields[name] = {
            "file": spec.file,
            "dtype": str(arr.dtype),
            "shape": [int(s) for s in arr.shape],
            "per": spec.per,
            "unit": units.get(name, spec.unit),
            "bytes": file.stat().st_size if file.exists() else 0,
        }

    info = {
        "path": str(ds.path),
        "legacy": ds.manifest is None,
        "format": manifest.get("format"),
        "format_version": manifest.get("format_version"),
        "created": manifest.get("created"),
        "n_molecules": N,
        "n_atoms": A,
        "n_grid_points": 0 if ds.grid_offsets is None else int(ds.grid_offsets[-1]),
        "elements": {chemical_symbols[z]: int(per_element[z]) for z in numbers},
        "atomic_numbers": [int(z) for z in numbers],
        "n_atoms_histogram": {int(s): int(c) for s, c in zip(sizes, counts)},
        "n_atoms_min": int(sizes[0]) if N else 0,
        "n_atoms_max": int(sizes[-1]) if N else 0,
        "n_atoms_mean": A / N if N else 0.0,
        "fields": fields,
        "sources": list(manifest.get("sources") or []),
        "converter": manifest.get("converter") or {},
    }
    if invalid_z:
        info["invalid_atomic_numbers"] = invalid_z
    return info


def format_info(info: dict) -> str:
    """Render :func:`dataset_info` as readable text with small tables for a terminal."""
    lines = []
    if info.get("legacy"):
        kind = "legacy layout (no manifest.json)"
    else:
        kind = f"{info.get('format')} v{info.get('format_version')}"
        if info.get("created"):
            kind += f", created {info['created']}"
    lines.append(f"dataset   {info['path']}")
    lines.append(f"format    {kind}")
    counts = f"{info['n_molecules']:,} molecules, {info['n_atoms']:,} atoms"
    if info.get("n_grid_points"):
        counts += f", {info['n_grid_points']:,} grid points"
    lines.append(f"size      {counts}")
    elements = ", ".join(f"{sym} {n:,}" for sym, n in info.get("elements", {}).items())
    lines.append(f"elements  {elements or '-'} (atoms)")
    if info.get("invalid_atomic_numbers"):
        lines.append(f"          {info['invalid_atomic_numbers']:,} atoms with atomic numbers outside {Z_RANGE}")

    lines.append("")
    lines.append(
        f"atoms per molecule: min {info['n_atoms_min']}, max {info['n_atoms_max']}, "
        f"mean {info['n_atoms_mean']:.1f}"
    )
    hist = _histogram_rows(info.get("n_atoms_histogram", {}))
    peak = max((c for _, c in hist), default=1)
    lines += _table(
        ["n_atoms", "molecules", ""],
        [[label, f"{c:,}", "#" * max(1, round(30 * c / peak))] for label, c in hist],
        right=(True, True, False),
    )

    lines.append("")
    lines.append("fields")
    rows = [
        [name, f["file"], f["dtype"], "x".join(map(str, f["shape"])), f["per"], f["unit"] or "-", _bytes(f["bytes"])]
        for name, f in info.get("fields", {}).items()
    ]
    lines += _table(["name", "file", "dtype", "shape", "per", "unit", "size"], rows,
                    right=(False, False, False, True, False, False, True))

    sources = info.get("sources") or []
    if sources:
        lines.append("")
        lines.append("sources")
        rows = []
        asked = (info.get("converter") or {}).get("format")  # --format, of datasets that recorded "ase"
        for src in sources:
            if isinstance(src, dict):
                sha = str(src.get("sha256") or "")
                fmt = src.get("format")
                rows.append([
                    str(src.get("name") or src.get("path") or "?"),
                    str((asked if fmt == "ase" and asked else fmt) or "-"),
                    f"{src['n_molecules']:,}" if isinstance(src.get("n_molecules"), int) else "-",
                    sha[:12] or "-",
                ])
            else:
                rows.append([str(src), "-", "-", "-"])
        lines += _table(["file", "format", "molecules", "sha256"], rows, right=(False, False, True, False))
    return "\n".join(lines)


def _histogram_rows(hist: dict) -> list[tuple[str, int]]:
    """(label, molecules) rows; equal-width bins when there are many distinct sizes."""
    items = sorted((int(k), int(v)) for k, v in hist.items())
    if len(items) <= HISTOGRAM_ROWS:
        return [(str(k), v) for k, v in items]
    lo, hi = items[0][0], items[-1][0]
    width = -(-(hi - lo + 1) // HISTOGRAM_ROWS)  # ceil
    binned: dict[int, int] = {}
    for k, v in items:
        b = (k - lo) // width
        binned[b] = binned.get(b, 0) + v
    return [(f"{lo + b * width}-{min(lo + (b + 1) * width - 1, hi)}", v) for b, v in sorted(binned.items())]


def _table(header: list[str], rows: list[list[str]], right: tuple[bool, ...]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    out = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
