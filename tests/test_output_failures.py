"""Outputs that cannot be written: one line (exit 2) naming the output, nothing half-written,
earlier outputs intact. For convert, split, stats, validate --report and train.

Tests run as root, which ignores file modes, so the failures are injected where the writers
write: :class:`ReadOnly` makes every write under a directory fail with EROFS (``os.mkdir``,
``os.open`` for writing, ``open`` for writing, renames), :class:`FullDisk` lets ``free``
bytes be written under it and fails the next write with ENOSPC. A full disk in the middle of
an orbax checkpoint (C++ writes no Python patch reaches) is a file-size limit set in a
subprocess (this file doubles as its script: ``python -m tests.test_output_failures``).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.cli import main

REPO = Path(__file__).resolve().parents[1]


def _under(path, root: Path) -> bool:
    if isinstance(path, int):
        return False
    return Path(os.path.abspath(os.fspath(path))).is_relative_to(root)


def _fail(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), path if isinstance(path, int) else os.fspath(path))


class ReadOnly:
    """Every write under ``root`` fails as on a read-only filesystem (EROFS)."""

    def __init__(self, monkeypatch, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        real_mkdir, real_open, real_builtin_open = os.mkdir, os.open, builtins.open
        real_rename, real_replace = os.rename, os.replace
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def mkdir(path, *args, **kwargs):
            if _under(path, self.root):
                raise _fail(errno.EROFS, path)
            return real_mkdir(path, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & writing and _under(path, self.root):
                raise _fail(errno.EROFS, path)
            return real_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and _under(file, self.root):
                raise _fail(errno.EROFS, file)
            return real_builtin_open(file, mode, *args, **kwargs)

        def rename(real):
            def patched(src, dst, *args, **kwargs):
                if _under(src, self.root) or _under(dst, self.root):
                    raise _fail(errno.EROFS, dst)
                return real(src, dst, *args, **kwargs)
            return patched

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "rename", rename(real_rename))
        monkeypatch.setattr(os, "replace", rename(real_replace))


class _FullFile:
    """A file object whose writes count against the free space of a :class:`FullDisk`."""

    def __init__(self, fh, disk: "FullDisk") -> None:
        self._fh, self._disk = fh, disk

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if self._disk.used + n > self._disk.free:
            raise _fail(errno.ENOSPC, self._fh.name)
        self._disk.used += n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


class FullDisk:
    """Files opened for writing under ``root`` share ``free`` bytes; the write that needs
    more fails with ENOSPC (``open``/``io.open`` and ``os.fdopen``, which atomic writes use)."""

    def __init__(self, monkeypatch, root: Path, free: int) -> None:
        self.root, self.free, self.used = Path(os.path.abspath(root)), free, 0
        real_builtin_open, real_fdopen = builtins.open, os.fdopen

        def open_(file, mode="r", *args, **kwargs):
            fh = real_builtin_open(file, mode, *args, **kwargs)
            return _FullFile(fh, self) if any(c in mode for c in "wax+") and _under(file, self.root) else fh

        def fdopen(fd, mode="r", *args, **kwargs):
            path = os.readlink(f"/proc/self/fd/{fd}")
            fh = real_fdopen(fd, mode, *args, **kwargs)
            return _FullFile(fh, self) if any(c in mode for c in "wax+") and _under(path, self.root) else fh

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "fdopen", fdopen)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _failure_line(err: str) -> str:
    """The one line a failure prints: the last line of stderr. Lines before it may only be
    the run's own notes (``mmlwf train`` says where it starts), never a traceback, warning or
    a second error."""
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith("mmlwf ") and ": error: " in lines[-1], err
    for earlier in lines[:-1]:
        assert earlier.startswith(("new run in ", "physics: ", "training: ", "epoch ")), err  # the training's notes
    return lines[-1]


def _assert_one_line(code: int, err: str, path: Path, what: str) -> None:
    assert code == 2, err
    line = _failure_line(err)
    assert str(path) in line and "cannot write" in line and what in line, err


def _listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _water_npz(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    np.savez(path, R=base + 0.03 * rng.standard_normal((n, 3, 3)), Z=np.tile([8, 1, 1], (n, 1)),
             E=-14.0 + 0.1 * rng.standard_normal(n), F=rng.standard_normal((n, 3, 3)))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A dataset with its split, stats and validation report, made without failures."""
    root = tmp_path_factory.mktemp("made")
    src = _water_npz(root / "water.npz")
    assert main(["convert", str(src), "-o", str(root / "ds")]) == 0
    assert main(["split", str(root / "ds"), "-o", str(root / "split.npz")]) == 0
    assert main(["stats", str(root / "ds"), "--split", str(root / "split.npz"), "-o", str(root / "stats.json")]) == 0
    assert main(["validate", str(root / "ds"), "--report", str(root / "report.json")]) in (0, 1)
    return root


@pytest.fixture
def out_dir(tmp_path, made):
    """An output folder holding a copy of the earlier outputs (the dataset is read from ``made``)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("split.npz", "stats.json", "report.json"):
        (out / name).write_bytes((made / name).read_bytes())
    return out


# ----------------------------------------------------------------------------- convert


def test_convert_to_a_read_only_location(made, tmp_path, monkeypatch, capsys):
    ReadOnly(monkeypatch, tmp_path / "ro")
    target = tmp_path / "ro" / "ds"
    code, out, err = _run(capsys, "convert", made / "water.npz", "-o", target)
    _assert_one_line(code, err, target, "Read-only file system")
    assert not (tmp_path / "ro").exists() and "wrote" not in out


def test_convert_onto_a_full_disk_keeps_the_earlier_dataset(made, out_dir, monkeypatch, capsys):
    target = out_dir / "ds"
    assert main(["convert", str(made / "water.npz"), "-o", str(target)]) == 0
    before = _listing(out_dir)
    FullDisk(monkeypatch, out_dir, free=600)  # the dataset needs ~2 kB
    code, out, err = _run(capsys, "convert", made / "water.npz", "-o", target, "--overwrite")
    _assert_one_line(code, err, target, "No space left on device")
    assert _listing(out_dir) == before  # no temporary directory, the earlier dataset as it was


# ----------------------------------------------------------------------------- split, stats, validate


def _split(made, out):
    return "split", made / "ds", "-o", out / "split.npz", "--seed", "7"


def _stats(made, out):
    return "stats", made / "ds", "--split", made / "split.npz", "-o", out / "stats.json"


def _validate(made, out):
    return "validate", made / "ds", "--report", out / "report.json"


WRITERS = {"split": (_split, "split.npz"), "stats": (_stats, "stats.json"), "validate": (_validate, "report.json")}


@pytest.mark.parametrize("command", list(WRITERS))
@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_small_outputs_fail_in_one_line_and_keep_the_earlier_file(made, out_dir, monkeypatch, capsys,
                                                                   command, failure):
    argv, name = WRITERS[command]
    before = _listing(out_dir)
    if failure == "read-only":
        ReadOnly(monkeypatch, out_dir)
    else:
        FullDisk(monkeypatch, out_dir, free=20)
    code, out, err = _run(capsys, *argv(made, out_dir))
    _assert_one_line(code, err, out_dir / name,
                     "Read-only file system" if failure == "read-only" else "No space left on device")
    assert "wrote" not in out and "valid" not in out
    assert _listing(out_dir) == before  # the earlier file intact, no temporary file


# ----------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.test_training import make_data

    return make_data(tmp_path_factory.mktemp("train_data"), n_water=16, n_methane=8)


def _train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data / "packed"), "--split", str(data / "split.npz"), "--stats",
            str(data / "stats.json"), "-o", str(run), "--set", "model.features=8", "--set",
            "model.num_iterations=1", "--set", "model.num_basis_functions=4", "--set", "training.batch_size=8",
            *extra]


def test_train_into_a_read_only_location(data, tmp_path, monkeypatch, capsys):
    ReadOnly(monkeypatch, tmp_path / "ro")
    run = tmp_path / "ro" / "run"
    code, out, err = _run(capsys, *_train_argv(data, run))
    _assert_one_line(code, err, run, "Read-only file system")
    assert not (tmp_path / "ro").exists()


def test_train_on_a_full_disk_before_its_first_checkpoint_leaves_nothing(data, tmp_path, monkeypatch, capsys):
    FullDisk(monkeypatch, tmp_path, free=300)  # train.log's first line fits, model.json does not
    run = tmp_path / "run"
    code, out, err = _run(capsys, *_train_argv(data, run))
    line = _failure_line(err)
    assert code == 2 and "cannot write" in line, err
    assert str(run) in line and "No space left on device" in line
    assert not run.exists()


def _save_with_a_file_size_limit(run: str, data: str, limit: int) -> int:
    """Subprocess: ``mmlwf train`` whose second ``latest`` checkpoint meets a file-size limit
    of ``limit`` bytes (writes beyond it fail: EFBIG), as a full disk fails them (ENOSPC)."""
    import resource
    import signal

    from mmlwf.training.checkpoint import CheckpointStore

    save = CheckpointStore.save_latest
    calls = []

    def limited(self, state, meta):
        calls.append(1)
        if len(calls) == 2:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        return save(self, state, meta)

    CheckpointStore.save_latest = limited
    # every epoch's 'latest' written (no minimum interval), so that the second write is epoch 2's
    return main(_train_argv(Path(data), Path(run), "--set", "training.max_epochs=3",
                            "--set", "training.checkpoint_interval_min=0"))


def test_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path):
    from mmlwf.training import checkpoint_meta, read_history

    run = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    # the file size limit (bytes) set before the second checkpoint: above train.log's, below a checkpoint's
    proc = subprocess.run([sys.executable, "-m", "tests.test_output_failures", str(run), str(data), "4096"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-3000:]
    line = _failure_line(err)
    assert f"{run}/checkpoints/latest: cannot write: File too large" in line
    assert "previous checkpoint is kept" in line
    assert checkpoint_meta(run, "latest")["epoch"] == 1  # the checkpoint before the failed save
    assert not list(run.rglob("*orbax-checkpoint-tmp*"))  # the failed save's files are gone
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2]
    assert "error: OutputError" in (run / "train.log").read_text()


def _private_tmpfs_possible() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_really_full_disk_during_the_first_checkpoint_save_is_one_line(data, tmp_path):
    """The real thing where it can be made: a 64 kB tmpfs in a private mount namespace (gone
    with the process) fills up during the first checkpoint save (ENOSPC from tensorstore)."""
    if not _private_tmpfs_possible():
        pytest.skip("no private tmpfs mount here (needs unshare and CAP_SYS_ADMIN)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = " ".join(f"'{a}'" for a in _train_argv(data, mnt / "run", "--set", "training.max_epochs=2"))
    script = f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && exec '{sys.executable}' -m mmlwf.cli {argv}"
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-3000:]
    line = _failure_line(err)
    assert f"{mnt}/run/checkpoints/" in line and "No space left on device (ENOSPC) while saving a checkpoint" in err


# ----------------------------------------------------------------------------- NaN


class _Poisoned:
    """A training loader whose first batch of the first epoch has an infinite target."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        if name in ("plan", "assemble"):  # no cheap resume path: batches come from epoch()
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, e: int = 0):
        for b, batch in enumerate(self.inner.epoch(e)):
            if (e, b) == (0, 0):
                batch = dict(batch, E=batch["E"].copy())
                batch["E"][0] = 1e300  # finite in float64, inf as a float32 target
            yield batch


def test_nan_loss_is_one_line_exit_2_and_a_fresh_run_leaves_nothing(data, tmp_path, monkeypatch, capsys):
    import mmlwf.training.runner as runner

    make_loaders = runner.make_loaders

    def poisoned(*args, **kwargs):
        train_loader, valid_loader = make_loaders(*args, **kwargs)
        return _Poisoned(train_loader), valid_loader

    monkeypatch.setattr(runner, "make_loaders", poisoned)
    run = tmp_path / "run"
    code, out, err = _run(capsys, *_train_argv(data, run, "--set", "training.max_epochs=1"))
    assert code == 2, err
    line = _failure_line(err)
    assert line.startswith("mmlwf train: error: non-finite loss or gradient") and "epoch 1" in line
    assert not run.exists()  # failed before its first checkpoint: nothing to resume, nothing left


if __name__ == "__main__":
    sys.exit(_save_with_a_file_size_limit(*sys.argv[1:3], int(sys.argv[3])))
