"""Per-epoch metrics (``history.csv``) and the plain-text run log (``train.log``).

The history is kept in memory, saved inside every ``latest`` checkpoint, and ``history.csv``
is rewritten from it atomically after each epoch. A resumed run starts from the history of
the checkpoint it resumes, so every epoch appears exactly once whatever was interrupted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import OutputError
from ..fileio import atomic_write, writing

log = logging.getLogger("mmlwf.training")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def write_history(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as CSV with ``columns`` (missing values empty), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``history.csv`` as dicts of floats (``epoch``/``step`` as int, empty as None)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if v == "":
                d[k] = None
            elif k in ("epoch", "step"):
                d[k] = int(v)
            else:
                d[k] = float(v)
        out.append(d)
    return out


class RunLog:
    """Plain lines to ``train.log`` (appended, flushed per line) and the ``mmlwf.training``
    logger; a tqdm bar over each epoch's batches only when stderr is a terminal."""

    def __init__(self, path: str | os.PathLike, progress: bool | None = None) -> None:
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed by close())
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.bar = None

    def line(self, message: str) -> None:
        text = " ".join(str(message).split())
        with writing(self.path):
            self.fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if self.bar is not None:
            self.bar.clear()
        log.info(text)
        if self.bar is not None:
            self.bar.refresh()

    def note(self, message: str) -> None:
        """:meth:`line` as far as the log can still be written (the note of a failure, which
        may be a full disk: the failure itself is what the caller reports)."""
        try:
            self.line(message)
        except (OSError, OutputError):
            pass

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        if not self.progress:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def advance(self, n: int = 1, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        try:
            self.fh.close()
        except OSError:  # a line that could not be written (disk full) was reported by line()
            pass


def format_metrics(row: dict, keys: Iterable[str]) -> str:
    parts = []
    for k in keys:
        v = row.get(k)
        if v is not None:
            parts.append(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
