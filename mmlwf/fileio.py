"""Atomic file writes: a temporary file in the target's folder, renamed into place when complete.

An operating-system error while writing (read-only location, disk full, quota) becomes one
:class:`~mmlwf.errors.OutputError` naming the output (:func:`writing`); the temporary file
is removed and an earlier version of the output stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Report an operating-system error of the enclosed writes as :class:`OutputError`
    naming ``path``. Errors raised deliberately with a message of their own (no errno, such
    as "output exists") pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OutputError.from_os(path, exc) from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path``, on error it vanishes.

    Readers never see a half-written file, and an interrupted writer leaves ``path`` as it was.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path):
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON in ``path``, written atomically (:func:`atomic_write`)."""
    import json

    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def make_temp_dir(prefix: str, parent: str | os.PathLike, suffix: str = "") -> Path:
    """A new temporary directory in ``parent`` with the permissions the umask gives any new
    directory (:func:`tempfile.mkdtemp` makes it 0700, which would stay with the output)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a directory tree, as far as possible (errors ignored)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def save_npz_deterministic(path: str | os.PathLike, arrays: dict) -> None:
    """Write an uncompressed ``.npz`` atomically whose bytes depend only on ``arrays``.

    :func:`numpy.savez` stamps each member with the current time; here every member gets
    the same fixed timestamp, so identical inputs give a byte-identical file (and Snakemake's
    checksum-based rerun triggers see no change).
    """
    import zipfile

    import numpy as np

    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
