"""The structural checks of mmlwf.packed: problems classified where they are found, and the
layout they read opened without a second check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmlwf.errors import DataError
from mmlwf.packed import (
    FIELDS,
    MANIFEST,
    Layout,
    PackedDataset,
    PackedWriter,
    ProblemKind,
    check_structure,
    read_manifest,
    structural_problems,
)
from mmlwf.structure import Structure


@pytest.fixture
def ds(tmp_path):
    rng = np.random.default_rng(3)
    with PackedWriter(tmp_path / "ds") as w:
        for i in range(30):
            n = 2 + i % 4
            R = np.arange(n)[:, None] * np.array([1.2, 0.0, 0.0]) + rng.uniform(-0.05, 0.05, (n, 3))
            w.add(Structure(Z=np.full(n, 6), R=R, E=-float(n), F=rng.normal(size=(n, 3)), index=i).checked("mem"))
    return tmp_path / "ds"


def _edit_manifest(path, change):
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _edit_npy(path, name, change):
    arr = np.load(path / FIELDS[name].file)
    np.save(path / FIELDS[name].file, change(arr.copy()))


def test_clean_directory_gives_the_layout_that_opens(ds):
    layout, problems = check_structure(ds)
    assert problems == [] and isinstance(layout, Layout)
    assert layout.manifest == read_manifest(ds) and layout.grid_offsets is None
    assert set(layout.fields) == {"offsets", "n_atoms", "E", "Qtot", "Z", "R", "F"}
    opened, checked = PackedDataset.from_layout(layout), PackedDataset(ds)
    assert opened.fields == checked.fields and len(opened) == len(checked) == 30
    np.testing.assert_array_equal(opened.offsets, checked.offsets)
    for name in checked.fields:
        np.testing.assert_array_equal(opened.gather(range(30))[name], checked.gather(range(30))[name])


def _non_increasing(off):
    off[5:25:2] = off[4:24:2]  # structures 4, 6, ..., 22 get no atoms
    return off


@pytest.mark.parametrize("corrupt, expected", [
    (lambda p: (p / "Z_pack.int32").unlink(), [(ProblemKind.MISSING_FILE, "Z", [])]),
    (lambda p: (p / "F_pack.f32").unlink(), [(ProblemKind.MISSING_FILE, "F", [])]),
    (lambda p: (p / MANIFEST).write_text("{bad"), [(ProblemKind.MANIFEST, None, [])]),
    (lambda p: _edit_manifest(p, lambda m: m.update(format="missing")), [(ProblemKind.MANIFEST, "format", [])]),
    (lambda p: _edit_manifest(p, lambda m: m["fields"]["n_atoms"].update(dtype="int32")),
     [(ProblemKind.MANIFEST, "n_atoms", [])]),
    (lambda p: _edit_manifest(p, lambda m: m.update(n_molecules=31)), [(ProblemKind.SIZE_MISMATCH, "n_molecules", [])]),
    (lambda p: _edit_npy(p, "offsets", lambda o: o + 2), [(ProblemKind.OFFSETS, "offsets", [0])]),
    (lambda p: _edit_npy(p, "offsets", _non_increasing),
     [(ProblemKind.OFFSETS, "offsets", list(range(4, 24, 2))), (ProblemKind.OFFSETS, "n_atoms", list(range(4, 24)))]),
    (lambda p: (p / "E.f64").write_bytes(b"\0" * 16), [(ProblemKind.SIZE_MISMATCH, "E", [])]),
])
def test_problems_are_classified_where_they_are_found(ds, corrupt, expected):
    corrupt(ds)
    layout, problems = check_structure(ds)
    assert layout is None
    assert [(p.kind, p.field, p.indices.tolist()) for p in problems] == expected
    # the same problems as one-line errors: the first structure concerned is named
    errors = structural_problems(ds)
    assert [str(e) for e in errors] == [str(p.error()) for p in problems]
    assert [e.index for e in errors] == [p.index for p in problems]
    with pytest.raises(DataError) as raised:
        PackedDataset(ds)
    assert str(raised.value) == str(errors[0])
