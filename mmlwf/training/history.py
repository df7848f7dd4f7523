"""Per-epoch metrics (``history.csv``) and the plain-text run log (``train.log``).

The history is kept in memory, saved inside every ``latest`` checkpoint, and ``history.csv``
is rewritten from it atomically after each epoch. A resumed run starts from the history of
the checkpoint it resumes, so every epoch appears exactly once whatever was interrupted.

After ``wall_time_s`` (seconds since the run began, resumed runs included) each row gives
the cost of its epoch (:data:`COST_COLUMNS`): ``train_structures_per_s`` and
``train_atoms_per_s``, the real (unpadded) structures and atoms of the epoch's training
batches per second of its training loop (the steps, the batch loading they wait for and, in
the first epoch, the train step's XLA compilation; validation and checkpoints excluded);
``padding_efficiency``, real atoms / padded atom
slots of those batches (0..1); ``xla_compilations``, XLA compilations since this invocation
of the training started (cumulative; a resumed run counts from its restart).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..fileio import atomic_write, writing
from .loop_state import EpochSums
from .progress import TrainingProgress

#: the per-epoch cost columns of history.csv (see the module doc), after ``wall_time_s``
COST_COLUMNS = ("train_structures_per_s", "train_atoms_per_s", "padding_efficiency", "xla_compilations")
#: the columns that differ between two runs of the same config and seed (time, and the
#: compilations of the process: a resumed run compiles again); every other column is reproducible
RUN_DEPENDENT_COLUMNS = ("wall_time_s", "train_structures_per_s", "train_atoms_per_s", "xla_compilations")
_INTEGER_COLUMNS = ("epoch", "step", "xla_compilations")


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


def count_batch(acc: EpochSums, batch: Mapping) -> None:
    """Add a training batch's real structures, real atoms and atom slots to the epoch sums
    ``acc`` (kept in the checkpoints: an epoch resumed midway counts all its batches)."""
    acc.structures += int(np.count_nonzero(batch["graph_mask"]))
    acc.atoms += int(np.count_nonzero(batch["atom_mask"]))
    acc.slots += int(np.shape(batch["atom_mask"])[0])


def epoch_cost(acc: EpochSums, compilations: int) -> dict:
    """The :data:`COST_COLUMNS` of an epoch from its sums ``acc`` (``train_s``: seconds of its
    training loop) and the XLA compilations so far."""
    seconds, slots = acc.train_s, acc.slots
    return {"train_structures_per_s": acc.structures / seconds if seconds > 0 else None,
            "train_atoms_per_s": acc.atoms / seconds if seconds > 0 else None,
            "padding_efficiency": acc.atoms / slots if slots else None,
            "xla_compilations": int(compilations)}


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``history.csv`` as dicts of floats (``epoch``, ``step``, ``xla_compilations``
    as int, empty as None)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if v == "":
                d[k] = None
            elif k in _INTEGER_COLUMNS:
                d[k] = int(v)
            else:
                d[k] = float(v)
        out.append(d)
    return out


class RunLog:
    """Plain lines to ``train.log`` (appended, flushed per line); what reaches the terminal
    is up to ``progress`` (:class:`~mmlwf.training.progress.TrainingProgress`)."""

    def __init__(self, path: str | os.PathLike, progress: TrainingProgress | None = None) -> None:
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed by close())
        self.progress = progress or TrainingProgress(False)
        self.board = None  # an EpochBoard (mmlwf.training.tensorboard) when the run writes TensorBoard events

    def scalars(self, row: dict) -> None:
        """A finished epoch's ``history.csv`` row to TensorBoard (when :attr:`board` is set)."""
        if self.board is not None:
            self.board.add(row)

    def line(self, message: str, terminal: bool = True) -> None:
        """``message`` to ``train.log`` and, when ``terminal``, to the terminal."""
        text = " ".join(str(message).split())
        with writing(self.path):
            self.fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if terminal:
            self.progress.say(text)

    def note(self, message: str) -> None:
        """``message`` to ``train.log`` only, as far as it can still be written (the note of a
        failure, which may be a full disk: the failure itself is what the caller reports, once)."""
        try:
            self.line(message, terminal=False)
        except (OSError, OutputError):
            pass

    def close(self) -> None:
        self.progress.close()
        if self.board is not None:
            self.board.close()
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
