"""What writers leave behind: temporary directories of live writers elsewhere are kept, stale
ones removed; the umask is respected; ``--overwrite`` of a file leaves no hidden copy; a
training that fails before its first checkpoint leaves nothing.

The live writer "in another PID namespace" is a subprocess that sees another host name and a
PID that is not alive here (this file doubles as its script: ``python -m
tests.test_writer_leftovers``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.cli import main
from mmlwf.packed import PackedDataset, PackedWriter
from mmlwf.tempdirs import LOCK, host_id

REPO = Path(__file__).resolve().parents[1]
FOREIGN_PID = 999_999_999  # no such process here


def _water(n: int):
    from mmlwf.structure import Structure

    rng = np.random.default_rng(n)
    base = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    return [Structure(Z=np.array([8, 1, 1]), R=base + 0.03 * rng.standard_normal((3, 3)), E=-14.0, index=i)
            for i in range(n)]


def _writer_elsewhere(out: str, n: str) -> int:
    """Subprocess: a writer that looks like one in another container or on another node (its
    host name differs and its PID is not alive here); it writes ``n`` structures, says
    "ready", and finishes when told to."""
    import socket

    socket.gethostname = lambda: "another-node"
    os.getpid = lambda: FOREIGN_PID
    with PackedWriter(out, overwrite=True) as w:
        for s in _water(int(n)):
            w.add(s)
        print("ready", flush=True)
        sys.stdin.readline()
    return 0


def test_a_live_writer_elsewhere_keeps_its_temporary_directory(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_writer_leftovers", str(out), "5"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        (live,) = tmp_path.glob(".ds.tmp-*")
        assert str(FOREIGN_PID) in live.name
        with PackedWriter(out, overwrite=True) as w:  # cleans up stale temporaries of ds first
            w.add(_water(1)[0])
        assert live.is_dir() and len(PackedDataset(out)) == 1
    finally:
        _, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, err
    assert len(PackedDataset(out)) == 5  # the other writer finished its dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_temporaries_of_dead_writers_elsewhere_are_removed_and_live_ones_kept(tmp_path):
    other = "0123456789ab"
    assert other != host_id()
    dead, live, unknown = (tmp_path / f".ds.tmp-{other}-{FOREIGN_PID}-{k}" for k in ("dead", "live", "nolock"))
    for d in (dead, live, unknown):
        d.mkdir()
    (dead / LOCK).touch()  # its writer is gone: nobody holds the lock
    with open(live / LOCK, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live writer holds it
        with PackedWriter(tmp_path / "ds") as w:
            w.add(_water(1)[0])
        assert not dead.exists()
        assert live.is_dir()
        assert unknown.is_dir()  # cannot tell (no lock file): kept
    with PackedWriter(tmp_path / "ds", overwrite=True) as w:
        w.add(_water(1)[0])
    assert not live.exists()  # its writer has let go


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_dataset_directory_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with PackedWriter(tmp_path / "ds") as w:
            w.add(_water(1)[0])
    finally:
        os.umask(old)
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "ds" / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_of_a_regular_file_leaves_no_hidden_copy(tmp_path, capsys):
    from tests.test_output_failures import _water_npz

    src = _water_npz(tmp_path / "water.npz", n=4)
    (tmp_path / "ds").write_text("an old file in the way\n")
    assert main(["convert", str(src), "-o", str(tmp_path / "ds"), "--overwrite"]) == 0
    assert len(PackedDataset(tmp_path / "ds")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "water.npz"]


def test_training_failing_before_its_first_checkpoint_leaves_the_run_directory_as_it_was(tmp_path):
    from mmlwf.training import TrainingDiverged, load_config
    from tests.test_training import BASE, PoisonedLoader, loaders, make_data, run_training

    data = make_data(tmp_path / "data", n_water=16, n_methane=8)
    run = tmp_path / "run"
    run.mkdir()  # made beforehand, as Snakemake makes the folder of a rule's outputs
    (run / "notes.txt").write_text("mine\n")
    tl, _ = loaders(data, load_config(BASE))
    with pytest.raises(TrainingDiverged):
        run_training(run, data, ["training.max_epochs=1"], train_loader=PoisonedLoader(tl, epoch=0, batch=1))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # no header-only history.csv, no model.json
    summary = run_training(run, data, ["training.max_epochs=1"])  # a re-run starts clean
    assert summary["status"] == "completed"
    assert "new run in" in (run / "train.log").read_text()


if __name__ == "__main__":
    sys.exit(_writer_elsewhere(*sys.argv[1:3]))
