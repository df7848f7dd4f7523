"""Bad input files and arguments: exit code 2, one line naming the file (and field and
structure), no traceback, no output left behind (issue 12, section 2, the input side)."""

import json
import os
import resource
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mmlwf.cli import main

FRAME = 'Properties=species:S:1:pos:R:3 energy={e} pbc="F F F"\n'


def _frame(n_atoms: int, e: float = -1.0, count: int | None = None) -> str:
    atoms = "".join(f"H 0 0 {0.74 * k}\n" for k in range(n_atoms))
    return f"{n_atoms if count is None else count}\n{FRAME.format(e=e)}{atoms}"


def _leftovers(out):
    """The output and any temporary sibling of it."""
    return [p.name for p in out.parent.iterdir() if out.name in p.name]


def _assert_refused(code, err, out, *expected):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert _leftovers(out) == []


def _main(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _cli(*argv, timeout=120, memory=None, file_size=None):
    """``mmlwf ARGV`` in a subprocess, bounded in time, memory and size of files written (so
    that a regression fails the test instead of hanging it or filling the disk)."""

    def limits():
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    proc = subprocess.run([sys.executable, "-m", "mmlwf.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limits)
    return proc.returncode, proc.stderr


# --- extxyz ---------------------------------------------------------------------------------

XYZ_CASES = {
    "truncated mid-frame": (_frame(2) + _frame(2)[:-len("H 0 0 0.74\n")],
                            ["structure 1", "declares 2 atoms but the file ends after 1"]),
    "truncated after a count line": (_frame(2) + "2\n", ["structure 1", "truncated right after the count line (line 5)"]),
    "count larger than the atoms": (_frame(2, count=3), ["structure 0", "declares 3 atoms but the file ends after 2"]),
    "count smaller than the atoms": (_frame(3, count=2) + _frame(2),
                                     ["structure 1", "line 5: expected the atom count of structure 1",
                                      "does the count line of structure 0 match its atoms?"]),
    "count line not a number": ("two\n" + FRAME.format(e=-1) + "H 0 0 0\nH 0 0 0.74\n",
                                ["structure 0", "line 1: expected the atom count", "'two'"]),
    "negative count": ("-2\n" + FRAME.format(e=-1) + "H 0 0 0\n", ["negative atom count -2"]),
    "frames after a blank line": (_frame(2) + "\n" + _frame(2), ["line 6: more data after a blank line"]),
    "text where a number belongs": (_frame(2) + _frame(2).replace("energy=-1.0", "energy=-1.0B5"),
                                    ["field 'E'", "structure 1", "not numbers"]),
}


@pytest.mark.parametrize("case", list(XYZ_CASES))
def test_bad_extxyz(tmp_path, capsys, case):
    text, expected = XYZ_CASES[case]
    src = tmp_path / "bad.xyz"
    src.write_text(text)
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "-o", out)
    _assert_refused(code, err, out, str(src), *expected)


def test_absurd_count_line_is_refused_at_once(tmp_path):
    src = tmp_path / "absurd.xyz"
    src.write_text("999999999999\nenergy=-1.0\nH 0 0 0\n")
    out = tmp_path / "out"
    code, err = _cli("convert", src, "-o", out, timeout=60)
    _assert_refused(code, err, out, str(src), "structure 0", "declares 999999999999 atoms",
                    "more than the remaining 8 bytes")


def test_absurd_count_line_in_other_structure_inputs(tmp_path):
    """The md starting structure and an esp-grid geometry go through the same check."""
    src = tmp_path / "absurd.xyz"
    src.write_text("999999999999\nenergy=-1.0\nH 0 0 0\n")
    out = tmp_path / "md"
    code, err = _cli("md", tmp_path / "no-run", "--structure", src, "--steps", "1", "-o", out, timeout=60)
    _assert_refused(code, err, out, str(src), "declares 999999999999 atoms")
    grid = tmp_path / "grid.txt"
    grid.write_text("0 0 0 0.1\n1 0 0 0.2\n")
    out = tmp_path / "esp"
    code, err = _cli("convert", grid, "--geometry", src, "-o", out, timeout=60)
    _assert_refused(code, err, out, str(src), "field 'R'", "declares 999999999999 atoms")


@pytest.mark.parametrize("fmt", ["extxyz", "xyz"])
def test_directory_given_as_extxyz(tmp_path, capsys, fmt):
    (tmp_path / "frames").mkdir()
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", tmp_path / "frames", "--format", fmt, "-o", out)
    _assert_refused(code, err, out, str(tmp_path / "frames"), "a directory, not an extxyz file")


class _Marker:
    """Unpickling this creates the directory ``path``: proof that the file was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("name", ["old.traj", "old.dat"])
def test_old_pickle_trajectory_is_refused_unread(tmp_path, capsys, name):
    import pickle

    marker = tmp_path / "unpickled"
    src = tmp_path / name
    src.write_bytes(b"PickleTrajectory" + pickle.dumps({"pbc": _Marker(marker)}, protocol=2))
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "--format", "ase", "-o", out)
    _assert_refused(code, err, out, str(src), "old pickle-based ASE trajectory")
    assert not marker.exists()


def test_trajectory_header_declaring_absurd_sizes(tmp_path, capsys):
    import struct

    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(3):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74 + 0.01 * k]])
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - k)
        frames.append(atoms)
    src = tmp_path / "damaged.traj"
    ase.io.write(src, frames)
    data = bytearray(src.read_bytes())
    data[32:40] = struct.pack("<q", 2**40)  # ULM header: the number of items
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "-o", out)
    _assert_refused(code, err, out, str(src), "declares more data than memory holds")


# --- HDF5 -------------------------------------------------------------------------------------

def _h5_atoms(path):
    """A 3-kB file declaring one conformation of 2e9 atoms (never written)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        g.create_dataset("species", shape=(2_000_000_000,), dtype="i8", chunks=(1024,))
        g.create_dataset("coordinates", shape=(1, 2_000_000_000, 3), dtype="f4", chunks=(1, 1024, 3))
        g.create_dataset("energies", data=np.zeros(1))


def _h5_conformations(path):
    """A 5-kB file declaring 1e12 conformations of H2 (never written)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        g.create_dataset("species", data=np.array([1, 1]))
        g.create_dataset("coordinates", shape=(10**12, 2, 3), dtype="f4", chunks=(1024, 2, 3))
        g.create_dataset("energies", shape=(10**12,), dtype="f8", chunks=(1024,))


def _h5_flat(path):
    """Flat padded arrays declaring 1e12 frames."""
    with h5py.File(path, "w") as f:
        f.create_dataset("R", shape=(10**12, 2, 3), dtype="f4", chunks=(1024, 2, 3))
        f.create_dataset("Z", shape=(10**12, 2), dtype="i1", chunks=(1024, 2))
        f.create_dataset("E", shape=(10**12,), dtype="f8", chunks=(1024,))


H5_CASES = {
    "2e9 atoms": (_h5_atoms, ["field 'mol/species'", "structure 0", "declares shape (2000000000,)",
                              "stores 0 of its 1953125 chunks"]),
    "1e12 conformations": (_h5_conformations, ["field 'mol/coordinates'", "declares shape (1000000000000, 2, 3)"]),
    "1e12 flat frames": (_h5_flat, ["field 'R'", "declares shape (1000000000000, 2, 3)"]),
}


@pytest.mark.parametrize("case", list(H5_CASES))
def test_hdf5_declaring_more_than_it_stores(tmp_path, case):
    make, expected = H5_CASES[case]
    src = tmp_path / "big.h5"
    make(src)
    assert src.stat().st_size < 10_000
    out = tmp_path / "out"
    code, err = _cli("convert", src, "-o", out, timeout=120, memory=3 << 30, file_size=64 << 20)
    _assert_refused(code, err, out, str(src), *expected)


@pytest.mark.parametrize("dcmnet", [False, True])
def test_npz_member_declaring_more_than_it_holds(tmp_path, capsys, dcmnet):
    import io
    import zipfile

    from numpy.lib import format as npy

    def member(shape, dtype, data):
        buf = io.BytesIO()
        npy.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        buf.write(data)
        return buf.getvalue()

    src = tmp_path / "big.npz"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("R.npy", member((10**9, 3, 3), "f8", bytes(72)))
        z.writestr("Z.npy", member((10**9, 3), "i8", bytes(24)))
        z.writestr("E.npy", member((10**9,), "f8", bytes(8)))
        if dcmnet:
            z.writestr("esp.npy", member((10**9, 10), "f8", bytes(80)))
            z.writestr("vdw_surface.npy", member((10**9, 10, 3), "f8", bytes(240)))
    out = tmp_path / "out"
    code, err = _cli("convert", src, "-o", out, memory=3 << 30, file_size=64 << 20)
    _assert_refused(code, err, out, str(src), "field 'R'", "declares shape (1000000000, 3, 3) (72000000000 bytes) "
                    "but the archive holds 72 bytes for it")


def _ani(path, **datasets):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        g = f.create_group("h2o")
        g.create_dataset("species", data=np.array([b"O", b"H", b"H"]))
        g.create_dataset("coordinates", data=rng.standard_normal((100, 3, 3)), chunks=(10, 3, 3), compression="gzip")
        g.create_dataset("energies", data=rng.standard_normal(100), chunks=(10,), compression="gzip")
        for name, make in datasets.items():
            make(g, name)


def test_hdf5_partly_written_and_unwritten_datasets(tmp_path, capsys):
    def partial(g, name):
        ds = g.create_dataset(name, shape=(100, 3, 3), chunks=(10, 3, 3), dtype="f8")
        ds[:35] = 1.0  # 4 of 10 chunks

    def unwritten(g, name):
        g.create_dataset(name, shape=(100,), dtype="f8")  # contiguous, never written

    for name, make, expected in (("forces", partial, "stores 4 of its 10 chunks"),
                                 ("charge", unwritten, "(800 bytes) but stores 0 bytes")):
        src = tmp_path / f"{name}.h5"
        _ani(src, **{name: make})
        out = tmp_path / "out"
        code, err = _main(capsys, "convert", src, "-o", out)
        _assert_refused(code, err, out, str(src), f"field 'h2o/{name}'", expected)


def test_hdf5_compressed_beyond_any_filter(tmp_path, capsys, monkeypatch):
    import mmlwf.io.bounds as bounds

    src = tmp_path / "ok.h5"
    _ani(src)
    out = tmp_path / "out"
    assert _main(capsys, "convert", src, "-o", out)[0] == 0  # compressed, every chunk written: fine
    monkeypatch.setattr(bounds, "MAX_EXPANSION", 1e-3)
    code, err = _main(capsys, "convert", src, "-o", tmp_path / "out2")
    _assert_refused(code, err, tmp_path / "out2", str(src), "field 'h2o/coordinates'", "even compressed")


def test_hdf5_damaged_metadata_and_objects_that_are_not_datasets(tmp_path, capsys):
    src = tmp_path / "meta.h5"
    _ani(src)
    with h5py.File(src, "r") as f:
        addr = h5py.h5o.get_info(f["h2o/coordinates"].id).addr
    data = bytearray(src.read_bytes())
    data[addr:addr + 16] = b"\xff" * 16  # the object header of h2o/coordinates
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "-o", out)
    _assert_refused(code, err, out, str(src), "corrupt HDF5 file")

    src = tmp_path / "group.h5"
    _ani(src, forces=lambda g, name: g.create_group(name))
    code, err = _main(capsys, "convert", src, "-o", out)
    _assert_refused(code, err, out, str(src), "field 'h2o/forces'", "a Group, not a dataset")


def test_hdf5_corrupt_chunk(tmp_path, capsys):
    src = tmp_path / "corrupt.h5"
    _ani(src)
    with h5py.File(src, "r") as f:
        info = f["h2o/coordinates"].id.get_chunk_info(3)
    with open(src, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "-o", out)
    _assert_refused(code, err, out, str(src), "cannot read conformations 0..99 of group 'h2o'", "structure 0")


# --- packed dataset manifest, stats file, stats arguments -----------------------------------

@pytest.fixture
def packed(tmp_path_factory):
    """A small packed dataset and its split."""
    root = tmp_path_factory.mktemp("packed")
    src = root / "h2.xyz"
    src.write_text("".join(_frame(2, e=-1.0 - 0.01 * k) for k in range(20)))
    assert main(["convert", str(src), "-o", str(root / "ds")]) == 0
    assert main(["split", str(root / "ds"), "-o", str(root / "split.npz")]) == 0
    return root / "ds", root / "split.npz"


@pytest.mark.parametrize("value", ["20.5", '"twenty"', "null", "[20]", "20.0", "-1", "true"])
def test_manifest_count_not_an_integer(tmp_path, capsys, packed, value):
    ds, _ = packed
    bad = _copy(ds, tmp_path / "ds")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["n_molecules"] = json.loads(value)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "split.npz"
    code, err = _main(capsys, "split", bad, "-o", out)
    _assert_refused(code, err, out, str(bad / "manifest.json"), "field 'n_molecules'", "is not a count")


def _copy(ds, to):
    to.mkdir()
    for f in ds.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def test_manifest_element_list_lacking_an_element(tmp_path, capsys, packed):
    ds, split = packed
    bad = _copy(ds, tmp_path / "ds")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["elements"] = [8]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "stats.json"
    code, err = _main(capsys, "stats", bad, "--split", split, "-o", out)
    _assert_refused(code, err, out, str(bad / "manifest.json"), "field 'elements'", "atoms of Z = 1")


@pytest.mark.parametrize("change, expected", [
    (dict(train=np.array([0.5, 1.5])), ["field 'train'", "expected a 1-d array of integer indices, got float64"]),
    (dict(n_molecules=np.array([20, 20])), ["unreadable split file"]),
])
def test_split_file_that_is_not_a_split(tmp_path, capsys, packed, change, expected):
    ds, split = packed
    with np.load(split) as z:
        arrays = {**dict(z), **change}
    bad = tmp_path / "split.npz"
    np.savez(bad, **arrays)
    out = tmp_path / "stats.json"
    code, err = _main(capsys, "stats", ds, "--split", bad, "-o", out)
    _assert_refused(code, err, out, str(bad), *expected)


@pytest.mark.parametrize("text, expected", [
    ("not json {", "not a stats file: not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"n_train": 16}', "field 'element_energies_by_Z'"),
])
def test_stats_file_that_is_not_a_stats_file(tmp_path, capsys, packed, text, expected):
    ds, split = packed
    stats = tmp_path / "stats.json"
    stats.write_text(text)
    out = tmp_path / "run"
    code, err = _main(capsys, "train", "--data", ds, "--split", split, "--stats", stats, "-o", out,
                      "--set", "training.max_epochs=1")
    _assert_refused(code, err, out, str(stats), expected)


# the batch shapes are the training loader's, not the stats': the options that shaped them
# are gone (their values are checked where the loader gets them: test_batching.py)
@pytest.mark.parametrize("argv, expected", [
    (["--cutoff", "-1"], "unrecognized arguments: --cutoff -1"),
    (["--batch-size", "8"], "unrecognized arguments: --batch-size 8"),
    (["--n-shapes", "0"], "unrecognized arguments: --n-shapes 0"),
])
def test_stats_arguments(tmp_path, capsys, packed, argv, expected):
    ds, split = packed
    out = tmp_path / "stats.json"
    with pytest.raises(SystemExit) as exc:  # argparse's refusal
        _main(capsys, "stats", ds, "--split", split, "-o", out, *argv)
    _assert_refused(exc.value.code, capsys.readouterr().err, out, expected)


# --- a dipole magnitude where a vector is expected; dropping a field ------------------------

def _qm9_db(path, where):
    import ase.db
    from ase import Atoms

    db = ase.db.connect(str(path))
    for k in range(3):
        atoms = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47 + 0.01 * k]])
        if where == "data":  # schnetpack's QM9: one-element arrays in the row's data
            db.write(atoms, data={"energy": np.array([-14.0 - k]), "dipole_moment": np.array([1.8 + k])})
        else:
            db.write(atoms, E=-14.0 - k, dipole_moment=1.8 + k)


def _fields(ds):
    return set(json.loads((ds / "manifest.json").read_text())["fields"])


@pytest.mark.parametrize("where", ["data", "key_value_pairs"])
def test_database_dipole_magnitude_is_skipped_with_a_warning(tmp_path, capsys, caplog, where):
    src = tmp_path / "qm9.db"
    _qm9_db(src, where)
    code, err = _cli("convert", src, "-o", tmp_path / "out")  # the terminal as a user sees it
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and "'dipole_moment'" in lines[0], err
    assert "magnitude" in lines[0] and "--key D=none" in lines[0]
    assert "D" not in _fields(tmp_path / "out") and "E" in _fields(tmp_path / "out")
    # dropped on request: no warning
    code, err = _main(capsys, "convert", src, "--key", "D=none", "-o", tmp_path / "out2")
    assert code == 0 and err.strip() == "" and not caplog.records, err
    assert "D" not in _fields(tmp_path / "out2")
    # asked for by name: a magnitude is still not a dipole vector
    out = tmp_path / "out3"
    code, err = _main(capsys, "convert", src, "--key", "D=dipole_moment", "-o", out)
    _assert_refused(code, err, out, str(src), "field 'D'", "a dipole magnitude, not a dipole vector")


def _npz(path, **extra):
    rng = np.random.default_rng(0)
    n = 5
    np.savez(path, R=rng.standard_normal((n, 3, 3)) * 2, Z=np.tile([8, 1, 1], (n, 1)), E=rng.standard_normal(n),
             **extra)


def test_npz_dipole_magnitude_skipped_and_key_none_drops_a_field(tmp_path, capsys, caplog):
    src = tmp_path / "mu.npz"
    _npz(src, dipole_moment=np.ones(5), F=np.zeros((5, 3, 3)))
    code, err = _main(capsys, "convert", src, "-o", tmp_path / "out")
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records] == [
        f"{src}: field 'D': 'dipole_moment' holds a dipole magnitude, not a vector: not stored "
        "(--key D=none silences this)"]
    caplog.clear()
    assert _fields(tmp_path / "out") >= {"E", "F"} and "D" not in _fields(tmp_path / "out")
    code, err = _main(capsys, "convert", src, "--key", "F=none", "--key", "D=none", "-o", tmp_path / "out2")
    assert code == 0 and err.strip() == "" and not caplog.records, err
    assert "F" not in _fields(tmp_path / "out2") and "D" not in _fields(tmp_path / "out2")
    # the workflow config's form, keys: {D: none}
    from mmlwf.convert import convert

    convert([src], tmp_path / "out3", keys={"D": "none"})
    assert "D" not in _fields(tmp_path / "out3") and not caplog.records


def test_required_fields_cannot_be_dropped(tmp_path, capsys):
    src = tmp_path / "ok.npz"
    _npz(src)
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", src, "--key", "R=none", "-o", out)
    _assert_refused(code, err, out, "R is required and cannot be dropped")
