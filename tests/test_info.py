"""Tests of mmlwf.info: counts, elements, histogram, fields and the terminal rendering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmlwf.errors import DataError
from mmlwf.info import dataset_info, format_info
from mmlwf.packed import MARKER, PackedWriter
from mmlwf.structure import Structure

# (atomic numbers, count of molecules with them)
MOLECULES = [([8, 1, 1], 5), ([6, 1, 1, 1, 1], 3), ([6, 8], 2)]


def write(path: Path, *, grid: bool = False, sizes: list[int] | None = None) -> Path:
    rng = np.random.default_rng(1)
    if sizes is None:
        zs = [z for z, count in MOLECULES for _ in range(count)]
    else:
        zs = [[1] * n for n in sizes]
    with PackedWriter(path) as w:
        for i, z in enumerate(zs):
            n = len(z)
            s = Structure(
                Z=np.array(z, np.int32), R=np.arange(3 * n, dtype=float).reshape(n, 3) * 2, E=-float(i),
                F=rng.normal(size=(n, 3)), index=i,
            )
            if grid:
                s.grid, s.esp = rng.normal(size=(7, 3)), rng.normal(size=7)
            w.add(s.checked("mem"), where="mem")
        w.close(sources=[{"path": "/data/water.xyz", "name": "water.xyz", "sha256": "ab" * 32,
                          "format": "extxyz", "n_molecules": len(zs)}])
    return path


def test_counts_elements_histogram(tmp_path: Path) -> None:
    info = dataset_info(write(tmp_path / "ds"))
    assert (info["n_molecules"], info["n_atoms"], info["n_grid_points"]) == (10, 34, 0)
    assert info["elements"] == {"H": 22, "C": 5, "O": 7}
    assert list(info["elements"]) == ["H", "C", "O"]  # by atomic number
    assert info["atomic_numbers"] == [1, 6, 8]
    assert info["n_atoms_histogram"] == {2: 2, 3: 5, 5: 3}
    assert (info["n_atoms_min"], info["n_atoms_max"], info["n_atoms_mean"]) == (2, 5, 3.4)
    assert info["legacy"] is False and info["format"] == "mmlwf-packed"
    assert info["sources"][0]["name"] == "water.xyz"
    json.dumps(info)  # JSON-serialisable as `mmlwf info --json` prints it


def test_fields_dtype_shape_unit(tmp_path: Path) -> None:
    info = dataset_info(write(tmp_path / "ds", grid=True))
    f = info["fields"]
    assert set(f) == {"offsets", "n_atoms", "grid_offsets", "E", "Qtot", "Z", "R", "F", "grid", "esp"}
    assert (f["R"]["dtype"], f["R"]["shape"], f["R"]["unit"], f["R"]["per"]) == ("float32", [34, 3], "Angstrom", "atom")
    assert (f["E"]["dtype"], f["E"]["shape"], f["E"]["unit"]) == ("float64", [10], "eV")
    assert (f["F"]["unit"], f["offsets"]["shape"], f["esp"]["shape"]) == ("eV/Angstrom", [11], [70])
    assert f["R"]["bytes"] == 34 * 3 * 4
    assert info["n_grid_points"] == 70


def test_legacy_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "ds")
    (path / "manifest.json").unlink()
    (path / MARKER).unlink()  # the legacy layout: never written by mmlwf
    info = dataset_info(path)
    assert info["legacy"] is True and info["sources"] == [] and info["format"] is None
    assert info["n_molecules"] == 10 and info["elements"] == {"H": 22, "C": 5, "O": 7}
    assert "legacy layout" in format_info(info)


def test_chunked_element_count_matches(tmp_path: Path) -> None:
    path = write(tmp_path / "ds")
    assert dataset_info(path, chunk_atoms=4)["elements"] == dataset_info(path)["elements"]


def test_format_info_text(tmp_path: Path) -> None:
    text = format_info(dataset_info(write(tmp_path / "ds")))
    assert "10 molecules, 34 atoms" in text
    assert "H 22, C 5, O 7" in text
    lines = text.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["3", "5"])  # 5 molecules of 3 atoms
    assert "#" in row
    r_row = next(line for line in lines if line.split()[:1] == ["R"])
    assert r_row.split()[1:6] == ["R_pack.f32", "float32", "34x3", "atom", "Angstrom"]
    assert "water.xyz" in text and "abababababab" in text


def test_format_info_accepts_json_round_trip(tmp_path: Path) -> None:
    info = json.loads(json.dumps(dataset_info(write(tmp_path / "ds"))))  # histogram keys become str
    assert format_info(info) == format_info(dataset_info(tmp_path / "ds"))


def test_many_sizes_are_binned(tmp_path: Path) -> None:
    info = dataset_info(write(tmp_path / "ds", sizes=list(range(1, 61))))
    assert len(info["n_atoms_histogram"]) == 60
    text = format_info(info)
    assert "1-3" in text and "58-60" in text
    assert sum(1 for line in text.splitlines() if "#" in line) == 20


def test_broken_dataset_raises_data_error(tmp_path: Path) -> None:
    path = write(tmp_path / "ds")
    with open(path / "R_pack.f32", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(DataError, match="truncated"):
        dataset_info(path)
