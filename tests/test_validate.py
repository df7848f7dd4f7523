"""Tests of mmlwf.validate on small synthetic packed datasets corrupted on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from mmlwf.packed import FIELDS, MARKER, PackedWriter, ProblemKind, read_manifest
from mmlwf.structure import Structure
from mmlwf.validate import Code, Finding, Severity, ValidationReport, min_distances, validate_dataset

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlff"
REF_ENERGY = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0}


# ----------------------------------------------------------------------------- helpers


def positions(rng: np.random.Generator, n: int, spacing: float = 1.5) -> np.ndarray:
    """``n`` atoms on a jittered cubic lattice: every distance is at least spacing - 0.2 Å."""
    side = int(np.ceil(n ** (1 / 3)))
    lattice = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return lattice * spacing + rng.uniform(-0.1, 0.1, size=(n, 3)) + rng.uniform(-5, 5, size=3)


def make_structures(n_mol: int = 40, sizes=(1, 3, 5, 8), seed: int = 0, grid: bool = False) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_mol):
        n = sizes[i % len(sizes)]
        Z = rng.choice([1, 6, 7, 8], size=n).astype(np.int32)
        E = sum(REF_ENERGY[int(z)] for z in Z) + rng.normal(0, 0.01) * n
        s = Structure(Z=Z, R=positions(rng, n), E=E, F=rng.normal(size=(n, 3)), index=i)
        if grid:
            g = 4 + i % 3
            s.grid, s.esp = rng.normal(size=(g, 3)) * 3, rng.normal(size=g)
        out.append(s)
    return out


def write(path: Path, structures: list[Structure]) -> Path:
    with PackedWriter(path) as w:
        for s in structures:
            w.add(s.checked("mem"))
    return path


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return write(tmp_path / "ds", make_structures())


def raw(path: Path, name: str) -> np.memmap:
    """Writable memory map of a field's raw file (edits go straight to disk)."""
    spec = FIELDS[name]
    return np.memmap(path / spec.file, dtype=spec.dtype, mode="r+").reshape(-1, *spec.trailing)


def offsets(path: Path) -> np.ndarray:
    return np.load(path / "offsets.npy")


def only(report: ValidationReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.summary()
    return found[0]


def codes(report: ValidationReport) -> list[str]:
    return [f.code for f in report.findings]


# ----------------------------------------------------------------------------- clean data


def test_clean_dataset_has_no_findings(ds: Path) -> None:
    report = validate_dataset(ds)
    assert report.ok and report.findings == [], report.summary()
    assert (report.n_molecules, report.n_atoms) == (40, int(offsets(ds)[-1]))


def test_legacy_directory_without_manifest_validates_unverified(ds: Path) -> None:
    (ds / "manifest.json").unlink()
    (ds / MARKER).unlink()  # the users' legacy layout: never had a manifest
    report = validate_dataset(ds)
    assert report.ok and [(f.level, f.code) for f in report.findings] == [("warning", "unverified")]


def test_mmlwf_dataset_that_lost_its_manifest_is_an_error(ds: Path) -> None:
    (ds / "manifest.json").unlink()
    report = validate_dataset(ds)
    assert not report.ok and [(f.code, f.field) for f in report.findings] == [("missing_file", "manifest")]
    assert MARKER in report.findings[0].message


def test_manifest_that_lost_its_checksums_is_an_error(ds: Path) -> None:
    manifest = json.loads((ds / "manifest.json").read_text())
    for entry in manifest["fields"].values():
        del entry["sha256"]
    (ds / "manifest.json").write_text(json.dumps(manifest))
    report = validate_dataset(ds)
    assert not report.ok
    assert {(f.code, f.field) for f in report.errors} == {("checksum", n) for n in manifest["fields"]}
    # without the marker either (a manifest always means mmlwf wrote it): still an error
    (ds / MARKER).unlink()
    assert {f.code for f in validate_dataset(ds).errors} == {"checksum"}


def test_manifest_replaced_by_another_datasets_is_an_error(tmp_path: Path, ds: Path) -> None:
    other = write(tmp_path / "other", make_structures(seed=1))
    for name in ("manifest.json", "E.f64", "F_pack.f32", "R_pack.f32", "Z_pack.int32"):
        (ds / name).write_bytes((other / name).read_bytes())
    report = validate_dataset(ds)
    assert [(f.code, f.field) for f in report.errors] == [("checksum", "sha256")]


def test_flipped_byte_is_a_checksum_error(ds: Path) -> None:
    with open(ds / "E.f64", "r+b") as fh:
        fh.seek(17)
        byte = fh.read(1)
        fh.seek(17)
        fh.write(bytes([byte[0] ^ 0x01]))
    report = validate_dataset(ds)
    assert [(f.code, f.field) for f in report.errors] == [("checksum", "E")]


# ----------------------------------------------------------------------------- structural errors


def test_truncated_file_is_reported_and_stops(ds: Path) -> None:
    raw(ds, "F")[5, 0] = np.nan  # would be a finding if the arrays were scanned
    size = (ds / "R_pack.f32").stat().st_size
    with open(ds / "R_pack.f32", "r+b") as fh:
        fh.truncate(size - 12)
    report = validate_dataset(ds)
    assert not report.ok
    assert codes(report) == ["size_mismatch"]
    f = report.findings[0]
    assert f.level == "error" and f.field == "R" and "truncated" in f.message
    assert report.n_molecules == 40


def test_non_increasing_offsets(ds: Path) -> None:
    off = offsets(ds)
    off[4] = off[3]  # molecule 3 gets zero atoms
    np.save(ds / "offsets.npy", off)
    report = validate_dataset(ds)
    # n_atoms.npy no longer matches the offsets either (structures 3 and 4); nothing else is checked
    assert [(f.level, f.code, f.field, f.indices) for f in report.findings] == [
        ("error", "offsets", "offsets", [3]),
        ("error", "offsets", "n_atoms", [3, 4]),
    ]
    assert "increasing" in report.findings[0].message


def test_manifest_field_file_missing(ds: Path) -> None:
    (ds / "F_pack.f32").unlink()
    report = validate_dataset(ds)
    assert [(f.code, f.field) for f in report.findings] == [("missing_file", "F")]


@pytest.mark.parametrize("text, code", [("{bad", "manifest"), ("[1]", "manifest")])
def test_broken_manifest(ds: Path, text: str, code: str) -> None:
    (ds / "manifest.json").write_text(text)
    report = validate_dataset(ds)
    assert not report.ok and codes(report) == [code]


def test_not_a_directory(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path / "nothing")
    assert not report.ok and codes(report) == ["missing_file"]


def test_offsets_findings_list_the_structures_the_check_found(ds: Path) -> None:
    off = offsets(ds)
    off[5:39:2] = off[4:38:2]  # 17 structures get no atoms
    np.save(ds / "offsets.npy", off)
    first = validate_dataset(ds).findings[0]
    assert (first.code, first.field, first.indices, first.n_total) == ("offsets", "offsets", list(range(4, 38, 2)), 17)


def test_first_offset_finding_concerns_structure_0_only(ds: Path) -> None:
    off = offsets(ds)
    off[0] = off[1] + 5  # structure 0 ends before it starts: also not increasing there
    off[6] = off[5]
    np.save(ds / "offsets.npy", off)
    report = validate_dataset(ds)
    assert [(f.field, f.indices) for f in report.findings] == [
        ("offsets", [0]), ("offsets", [0, 5]), ("n_atoms", [0, 5, 6])
    ]
    assert "first offset" in report.findings[0].message


@pytest.mark.parametrize("key, value, code", [
    ("format", "missing", "manifest"),  # the manifest's words never decide the code
    ("n_molecules", -1, "size_mismatch"),
    ("n_grid_points", -1, "manifest"),
])
def test_manifest_findings_are_classified_where_found(ds: Path, key: str, value, code: str) -> None:
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest[key] = value
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert [(f.code, f.field) for f in validate_dataset(ds).findings] == [(code, key)]


def test_manifest_dtype_of_n_atoms_is_a_manifest_finding(ds: Path) -> None:
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["fields"]["n_atoms"]["dtype"] = "int32"
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert [(f.code, f.field) for f in validate_dataset(ds).findings] == [("manifest", "n_atoms")]


def test_findings_carry_enums_and_every_structural_kind_is_a_code(ds: Path) -> None:
    assert {k.value for k in ProblemKind} <= {c.value for c in Code}
    raw(ds, "E")[5] = np.nan
    report = validate_dataset(ds)
    assert all(isinstance(f.code, Code) and isinstance(f.level, Severity) for f in report.findings)
    assert [(f.level, f.code) for f in report.findings] == [(Severity.ERROR, Code.CHECKSUM), (Severity.ERROR, Code.NAN)]
    back = ValidationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert [(f.level, f.code) for f in back.findings] == [(Severity.ERROR, Code.CHECKSUM), (Severity.ERROR, Code.NAN)]


# ----------------------------------------------------------------------------- value errors


def test_nan_in_forces(ds: Path) -> None:
    off = offsets(ds)
    F = raw(ds, "F")
    F[off[3] + 0, 1] = np.nan
    F[off[17] + 2, 0] = np.inf
    F.flush()
    report = validate_dataset(ds, check_checksums=False)
    f = only(report, "nan")
    assert (f.level, f.field, f.indices, f.n_total) == ("error", "F", [3, 17], 2)
    assert f.one_line() == "error [nan] field 'F' structures 3, 17: contains NaN or Inf"
    assert codes(report) == ["nan"]  # the NaN structure is left out of the force statistics


def test_nan_in_energy_and_positions(ds: Path) -> None:
    raw(ds, "E")[5] = np.inf
    raw(ds, "R")[offsets(ds)[9], 2] = np.nan
    report = validate_dataset(ds, check_checksums=False)
    assert [(f.code, f.field, f.indices) for f in report.findings] == [("nan", "E", [5]), ("nan", "R", [9])]


def test_nan_in_esp(tmp_path: Path) -> None:
    path = write(tmp_path / "ds", make_structures(12, grid=True))
    goff = np.load(path / "grid_offsets.npy")
    raw(path, "esp")[goff[2] + 1] = np.nan
    report = validate_dataset(path, check_checksums=False)
    assert [(f.code, f.field, f.indices) for f in report.findings] == [("nan", "esp", [2])]


def test_atomic_number_out_of_range(ds: Path) -> None:
    off = offsets(ds)
    Z = raw(ds, "Z")
    Z[off[2]] = 0
    Z[off[7] + 1] = 200
    Z.flush()
    report = validate_dataset(ds, check_checksums=False)
    f = only(report, "z_range")
    assert (f.level, f.field, f.indices) == ("error", "Z", [2, 7])
    assert "0" in f.message and "200" in f.message
    assert codes(report) == ["z_range"]  # bad structures are left out of the energy fit


def test_atom_on_top_of_another(ds: Path) -> None:
    off = offsets(ds)
    R = raw(ds, "R")
    R[off[6] + 1] = R[off[6]]  # molecule 6 has 3 atoms
    R.flush()
    report = validate_dataset(ds, check_checksums=False)
    f = only(report, "too_close")
    assert (f.level, f.field, f.indices) == ("error", "R", [6])
    assert "close_atoms" not in codes(report)


def test_checksum_mismatch(ds: Path) -> None:
    raw(ds, "E")[4] += 1e-3  # finite and small: only the checksum sees it
    report = validate_dataset(ds)
    assert [(f.level, f.code, f.field) for f in report.findings] == [("error", "checksum", "E")]
    assert validate_dataset(ds, check_checksums=False).ok


def test_indices_capped_with_total(tmp_path: Path) -> None:
    path = write(tmp_path / "ds", make_structures(150, sizes=(2,)))
    raw(path, "F")[::2, 0] = np.nan  # atom 0 of every molecule
    f = only(validate_dataset(path, check_checksums=False), "nan")
    assert f.indices == list(range(100)) and f.n_total == 150
    assert f.one_line().startswith("error [nan] field 'F' structures 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (+140 more)")


# ----------------------------------------------------------------------------- warnings


def test_close_atoms_warning(ds: Path) -> None:
    off = offsets(ds)
    R = raw(ds, "R")
    R[off[6] + 1] = R[off[6]] + np.array([0.3, 0.0, 0.0], np.float32)
    R.flush()
    report = validate_dataset(ds, check_checksums=False)
    assert report.ok
    f = only(report, "close_atoms")
    assert (f.level, f.field, f.indices) == ("warning", "R", [6])
    assert "0.3" in f.message


def test_large_molecules_use_kdtree(tmp_path: Path) -> None:
    structures = make_structures(6, sizes=(300, 3))
    for i, shift in ((0, 0.05), (4, 0.3)):
        structures[i].R[7] = structures[i].R[250] + np.array([shift, 0, 0])
    report = validate_dataset(write(tmp_path / "ds", structures))
    assert [(f.code, f.indices) for f in report.findings] == [("too_close", [0]), ("close_atoms", [4])]


def test_energy_outlier(tmp_path: Path) -> None:
    structures = make_structures()
    structures[9].E += 5.0
    structures[14].E -= 1.0  # 0.2 eV/atom (noise 0.01): scored against a fit without structure 9
    report = validate_dataset(write(tmp_path / "ds", structures))
    assert report.ok
    f = only(report, "energy_outlier")
    assert (f.level, f.field, f.indices) == ("warning", "E", [9, 14])
    assert "structure 9" in f.message  # the worst one


def test_energy_outlier_needs_enough_structures(tmp_path: Path) -> None:
    structures = make_structures(8)
    structures[3].E += 500.0
    assert validate_dataset(write(tmp_path / "ds", structures)).findings == []


def test_force_outlier(tmp_path: Path) -> None:
    structures = make_structures()
    structures[11].F = structures[11].F * 100
    report = validate_dataset(write(tmp_path / "ds", structures))
    f = only(report, "force_outlier")
    assert (f.level, f.field, f.indices) == ("warning", "F", [11])
    assert report.ok


def test_duplicates(tmp_path: Path) -> None:
    structures = make_structures()
    for later, earlier in ((20, 8), (28, 8), (30, 10)):
        s = structures[earlier]
        structures[later] = Structure(Z=s.Z.copy(), R=s.R.copy(), E=s.E, F=s.F.copy(), index=later)
    # not duplicates: moved by more than the rounding, or other elements at the same places
    structures[24].Z, structures[24].R = structures[0].Z.copy(), structures[0].R + 1e-3
    structures[26].R = structures[2].R.copy()
    structures[26].Z = np.where(structures[2].Z == 1, 6, 1).astype(np.int32)
    report = validate_dataset(write(tmp_path / "ds", structures))
    assert report.ok
    f = only(report, "duplicate")
    assert (f.level, f.field, f.indices, f.n_total) == ("warning", "R", [20, 28, 30], 3)
    assert "20 = 8" in f.message and "28 = 8" in f.message and "30 = 10" in f.message


@pytest.mark.parametrize("chunk_atoms", [1, 7, 64])
def test_chunking_does_not_change_findings(ds: Path, chunk_atoms: int) -> None:
    off = offsets(ds)
    raw(ds, "F")[off[3] + 1, 0] = np.nan
    raw(ds, "Z")[off[18]] = 0
    R = raw(ds, "R")
    R[off[6] + 1] = R[off[6]] + np.array([0.3, 0.0, 0.0], np.float32)
    R[off[31] : off[32]] = R[off[3] : off[4]]  # 31 (8 atoms) becomes a copy of 3 (8 atoms)
    R.flush()
    Z = raw(ds, "Z")
    Z[off[31] : off[32]] = Z[off[3] : off[4]]
    Z.flush()
    reference = validate_dataset(ds).to_dict()["findings"]
    assert {f["code"] for f in reference} >= {"nan", "z_range", "close_atoms", "duplicate", "checksum"}
    assert validate_dataset(ds, chunk_atoms=chunk_atoms).to_dict()["findings"] == reference


# ----------------------------------------------------------------------------- report


def test_report_json_round_trip(ds: Path, tmp_path: Path) -> None:
    raw(ds, "E")[5] = np.nan
    report = validate_dataset(ds)
    out = tmp_path / "reports" / "validation.json"
    report.write_json(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["validation.json"]  # no temp file left
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["n_errors"] == len(report.errors) == 2
    assert data["findings"][0]["code"] == "checksum"
    back = ValidationReport.read_json(out)
    assert back == report and back.to_dict() == report.to_dict()


def test_finding_one_line() -> None:
    f = Finding("error", "nan", "F", "contains NaN\n or Inf", [3, 17, 20, 21, 22, 23, 24], 7)
    assert f.one_line(shown=2) == "error [nan] field 'F' structures 3, 17 (+5 more): contains NaN or Inf"
    assert Finding("error", "checksum", "E", "differs").one_line() == "error [checksum] field 'E': differs"
    assert Finding("warning", "x", "R", "m", [4]).one_line() == "warning [x] field 'R' structure 4: m"


# ----------------------------------------------------------------------------- distances


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_min_distances_match_brute_force(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = np.array(sizes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    R = (rng.normal(size=(counts.sum(), 3)) * 2).astype(np.float32)
    got = min_distances(R, starts, counts, np.ones(counts.size, bool), cutoff=0.5)
    for m, (a, n) in enumerate(zip(starts, counts)):
        want = pdist(R[a : a + n].astype(np.float64)).min() if n > 1 else np.inf
        assert got[m] == pytest.approx(want, rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (REAL / "rmd17_ethanol_train_1000.xyz").exists(), reason="shared real data absent")
def test_real_rmd17_ethanol_is_clean(tmp_path: Path) -> None:
    import ase.io

    frames = ase.io.read(REAL / "rmd17_ethanol_train_1000.xyz", ":")
    structures = [
        Structure(Z=a.numbers, R=a.positions, E=a.get_potential_energy(), F=a.get_forces(), index=i)
        for i, a in enumerate(frames)
    ]
    path = write(tmp_path / "ethanol", structures)
    report = validate_dataset(path)
    assert report.ok and report.findings == [], report.summary()
    assert read_manifest(path)["n_molecules"] == report.n_molecules == 1000
