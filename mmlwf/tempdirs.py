"""Temporary directories of writers that rename them into place when complete (packed datasets).

A writer fills ``.NAME.tmp-HOST-PID-XXXXXXXX`` beside its output ``NAME`` and holds an
exclusive lock (:func:`fcntl.flock`) on the file ``.writer.lock`` inside it until it renames
the directory into place; the kernel releases the lock when the process dies, however it
dies. A writer that was killed leaves its directory behind; the next writer of the same output
removes it only when its writer is surely gone:

- same host and PID namespace (``HOST`` is a digest of the host name, the boot id and the PID
  namespace): its PID is not alive;
- anywhere else (another container, another node sharing the filesystem), where the PID means
  nothing here: no process holds its lock. Where the filesystem cannot tell (no lock support,
  no lock file, a name in another layout), the directory is kept: litter, never a live
  writer's data deleted.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import IO

from .fileio import make_temp_dir, remove_path

LOCK = ".writer.lock"
_OWNER = re.compile(r"(?P<host>[0-9a-f]{12})-(?P<pid>[0-9]+)-[^-]*")


def host_id() -> str:
    """12 hex digits naming this host, boot and PID namespace (where a PID means something)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def create_writer_dir(out: Path) -> tuple[Path, IO]:
    """A new temporary directory for the writer of ``out`` (umask permissions) and the open
    lock file that marks it live (pass both to :func:`release_writer_dir`)."""
    tmp = make_temp_dir(f"{_prefix(out)}{host_id()}-{os.getpid()}-", out.parent)
    try:
        lock = open(tmp / LOCK, "wb")  # noqa: SIM115 (closed by release_writer_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no lock support here: other hosts keep the directory, this one checks the PID
        pass
    return tmp, lock


def release_writer_dir(tmp: Path, lock: IO) -> None:
    """Remove the lock file (before the directory is renamed into place) and release it."""
    try:
        (tmp / LOCK).unlink(missing_ok=True)
    finally:
        lock.close()


def move_into_place(tmp: Path, lock: IO, out: Path, *, overwrite: bool) -> None:
    """Release the writer's lock and rename its finished directory ``tmp`` to ``out``. An
    existing ``out`` (a directory, or a regular file) is replaced only with ``overwrite``:
    renamed aside to ``.NAME.old-PID`` first, removed once ``tmp`` is in place."""
    release_writer_dir(tmp, lock)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out}: output appeared while writing")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        remove_path(old)
    else:
        os.rename(tmp, out)


def is_stale(tmp: Path, out: Path) -> bool:
    """Whether the writer of the temporary directory ``tmp`` of ``out`` is surely gone."""
    owner = _OWNER.fullmatch(tmp.name[len(_prefix(out)):])
    if owner is not None and owner["host"] == host_id():
        return not _pid_alive(int(owner["pid"]))
    return _lock_free(tmp / LOCK)


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary directories of ``out`` left by writers that are gone."""
    for cand in out.parent.glob(f"{glob.escape(_prefix(out))}*"):
        if cand.is_dir() and is_stale(cand, out):
            shutil.rmtree(cand, ignore_errors=True)


def _lock_free(path: Path) -> bool:
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except OSError:  # no lock file: a writer starting or finishing, or another layout
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live writer, or no lock support
            return False
        return True


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
