"""What a failed training leaves in its run directory.

A training that fails before its first checkpoint (a NaN loss in epoch 1, a full disk, bad
settings found late) has nothing to resume: it removes what it created, the run directory
itself when it created it, so that a half-made run (a header-only ``history.csv``, a
``model.json`` without parameters) is never mistaken for a result and a re-run starts clean.
Entries that were there before it started are left as they were.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..fileio import remove_path


def entries_before(run_dir: str | os.PathLike) -> set[str] | None:
    """Names in ``run_dir`` before the training starts (None when it does not exist)."""
    try:
        return {p.name for p in Path(run_dir).iterdir()}
    except FileNotFoundError:
        return None
    except OSError:  # not a directory, unreadable: touch nothing
        return {"*"}


def remove_fresh_run(run_dir: str | os.PathLike, before: set[str] | None) -> None:
    """Remove what this training created in ``run_dir`` (all of it when it created it)."""
    run_dir = Path(run_dir)
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if "*" in before:
        return
    try:
        created = [p for p in run_dir.iterdir() if p.name not in before]
    except OSError:
        return
    for path in created:
        remove_path(path)
