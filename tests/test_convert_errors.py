"""Bad input: one-line error naming file, field and index; exit non-zero; nothing left behind."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmlwf.cli import main


def _npz(path, n=8, width=4, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "R": rng.standard_normal((n, width, 3)) * 2,
        "Z": np.tile(np.array([6, 8, 1, 1]), (n, 1)),
        "N": np.full(n, width),
        "E": rng.standard_normal(n),
        "F": rng.standard_normal((n, width, 3)),
    }
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v(arrays[k]) if callable(v) else v
    np.savez(path, **arrays)
    return path


def _with(i, j, value):
    def edit(a):
        a = a.copy()
        a[(i, *np.atleast_1d(j))] = value
        return a

    return edit


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


CASES = {
    "missing energies": (dict(E=None), ["field 'E'", "missing energies"]),
    "forces of the wrong shape": (dict(F=lambda f: f[..., :2]), ["field 'F'", "wrong shape (8, 4, 2)"]),
    "NaN in forces": (dict(F=_with(5, (2, 1), np.nan)), ["field 'F'", "structure 5", "NaN"]),
    "Z = 0 among the real atoms": (dict(Z=_with(3, 1, 0)), ["field 'Z'", "structure 3", "Z = 0 among the real atoms"]),
    "inconsistent N": (dict(N=_with(6, (), 3)), ["field 'N'", "structure 6", "inconsistent N"]),
    "Z out of range": (dict(Z=_with(2, 0, 200)), ["field 'Z'", "structure 2", "outside 1-118"]),
    "Inf in energies": (dict(E=_with(4, (), np.inf)), ["field 'E'", "structure 4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_npz_gives_one_line_and_no_output(tmp_path, capsys, case):
    changes, expected = CASES[case]
    src = _npz(tmp_path / "bad.npz", **changes)
    code, err = _run(capsys, "convert", src, "-o", tmp_path / "out")
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "bad.npz" in err
    for text in expected:
        assert text in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_missing_energy_in_extxyz_names_the_frame(tmp_path, capsys):
    text = ""
    for k in range(3):
        energy = "" if k == 2 else f" energy={-1.0 - k}"
        text += f'2\nProperties=species:S:1:pos:R:3{energy} pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n'
    (tmp_path / "e.xyz").write_text(text)
    code, err = _run(capsys, "convert", tmp_path / "e.xyz", "-o", tmp_path / "out")
    assert code != 0 and "e.xyz: field 'E': structure 2: missing energy" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--energy-unit", "furlong"], "unknown energy unit 'furlong'"),
        (["--length-unit", "parsec"], "unknown length unit 'parsec'"),
        (["--format", "wfn"], "unknown format 'wfn'"),
        (["--format", "cube"], "ok.npz: not a text cube file"),
        (["--key", "Energy=E"], "unknown canonical name 'Energy'"),
        (["--key", "E=nonexistent"], "key 'nonexistent' given for E is not in the file"),
    ],
)
def test_bad_settings(tmp_path, capsys, argv, expected):
    src = _npz(tmp_path / "ok.npz")
    code, err = _run(capsys, "convert", src, "-o", tmp_path / "out", *argv)
    assert code != 0 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["empty.xyz", "empty.npz", "empty.h5", "empty.db"])
def test_empty_file(tmp_path, capsys, name):
    (tmp_path / name).touch()
    code, err = _run(capsys, "convert", tmp_path / name, "-o", tmp_path / "out")
    assert code != 0 and f"{name}: empty file" in err
    assert not (tmp_path / "out").exists()


def test_xyz_with_no_frames_and_garbage(tmp_path, capsys):
    (tmp_path / "blank.xyz").write_text("\n\n")
    code, err = _run(capsys, "convert", tmp_path / "blank.xyz", "-o", tmp_path / "out")
    assert code != 0 and "blank.xyz" in err and len(err.splitlines()) == 1
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    code, err = _run(capsys, "convert", tmp_path / "junk.npz", "-o", tmp_path / "out")
    assert code != 0 and "junk.npz" in err and "not a readable .npz" in err
    assert not (tmp_path / "out").exists()


def test_second_source_bad_keeps_nothing_of_the_first(tmp_path, capsys):
    good = _npz(tmp_path / "good.npz")
    bad = _npz(tmp_path / "bad.npz", F=_with(1, (0, 0), np.nan))
    code, err = _run(capsys, "convert", good, bad, "-o", tmp_path / "out")
    assert code != 0 and "bad.npz: field 'F': structure 1" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    src = _npz(tmp_path / "ok.npz")
    assert _run(capsys, "convert", src, "-o", tmp_path / "out")[0] == 0
    before = (tmp_path / "out" / "manifest.json").read_text()
    code, err = _run(capsys, "convert", src, "-o", tmp_path / "out")
    assert code != 0 and "--overwrite" in err
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    bad = _npz(tmp_path / "bad.npz", F=_with(1, (0, 0), np.nan))
    assert _run(capsys, "convert", bad, "-o", tmp_path / "out", "--overwrite")[0] != 0
    assert (tmp_path / "out" / "manifest.json").read_text() == before  # a failed overwrite loses nothing


def _slow_source(path, n_frames=20000):
    """An extxyz big enough that converting it takes a few seconds."""
    rng = np.random.default_rng(0)
    lines = []
    for k in range(n_frames):
        pos = np.array([[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]]) + 0.01 * rng.standard_normal((3, 3))
        lines.append(f'3\nProperties=species:S:1:pos:R:3:forces:R:3 energy={-14 - 0.01 * k:.6f} pbc="F F F"')
        for sym, p in zip("OHH", pos):
            lines.append(f"{sym} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} 0.1 0.2 0.3")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_conversion_leaves_no_output(tmp_path, sig):
    src = _slow_source(tmp_path / "big.xyz")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mmlwf.cli", "convert", str(src), "-o", str(out), "--chunk-atoms", "3000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)

    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(1.0)  # well into reading and writing chunks of 3000 atoms
    assert proc.poll() is None, "conversion ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not out.exists()
    if sig == signal.SIGTERM:  # a clean stop removes its temporary directory at once
        assert not list(tmp_path.glob(".out.tmp-*"))
    # the next run completes and sweeps away what a killed run left
    subprocess.run([sys.executable, "-m", "mmlwf.cli", "convert", str(src), "-o", str(out)], check=True,
                   capture_output=True)
    assert out.exists() and not list(tmp_path.glob(".out.tmp-*"))
