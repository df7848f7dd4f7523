"""What a training shows in the terminal: one progress bar and a few summary lines.

``train.log`` and ``history.csv`` keep the full record (a line and a row per epoch). The
terminal gets, through the ``mmlwf.training`` logger at INFO (the CLI and the workflow's
``log_to`` give it a handler):

- the run's notes (start, resume, skipped loss terms, plateau, why it stopped);
- a summary line after the first epoch, then after the first epoch that ends at least
  ``summary_every`` seconds after the previous summary, and after the last epoch;
- with ``verbose``, every epoch's line of ``train.log`` as well;
- on a terminal (or when asked), one tqdm bar over all the batches of the training, with
  the epoch and the current losses. Off a terminal a forced bar redraws at most once per
  ``summary_every`` seconds, so a log file does not fill with redraws.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger("mmlwf.training")

#: default seconds between two summary lines
SUMMARY_EVERY_S = 60.0

#: (metric stem in history.csv, label, factor from the history's unit, unit shown)
_SHOWN = (
    ("energy_mae_eV", "energy MAE", 1e3, "meV"),
    ("forces_mae_eV_per_A", "forces MAE", 1e3, "meV/Å"),
    ("dipole_mae_eA", "dipole MAE", None, "D"),  # factor: 1 / ase.units.Debye
    ("esp_rmse_kcal_per_mol_e", "ESP RMSE", 1.0, "kcal/(mol·e)"),
)


def _factor(scale: float | None) -> float:
    if scale is None:
        from ase.units import Debye

        return 1.0 / Debye
    return scale


def summary_line(row: Mapping, max_epochs: int, best_epoch: int | None, best_loss: float | None) -> str:
    """One line on the epoch of history ``row``: losses, the best so far, the headline errors
    (of the validation set when it was evaluated, else of the training batches), throughput
    and the time since the run began, e.g. ``epoch 3/10  loss: train 0.52, valid 0.61 (best)
    valid: energy MAE 12.1 meV, forces MAE 48.2 meV/Å  2100 structures/s, 31.4 s elapsed``."""
    validated = row.get("valid_loss") is not None
    loss = f"train {row['train_loss']:.5g}"
    if validated:
        loss += f", valid {row['valid_loss']:.5g}"
    if best_epoch == row["epoch"]:
        loss += " (best)"
    elif best_epoch is not None and best_loss is not None:
        loss += f" (best {best_loss:.5g} at epoch {best_epoch})"
    parts = [f"epoch {row['epoch']}/{max_epochs}", f"loss: {loss}"]
    prefix = "valid" if validated else "train"
    errors = [f"{label} {row[f'{prefix}_{stem}'] * _factor(scale):.4g} {unit}" for stem, label, scale, unit in _SHOWN
              if row.get(f"{prefix}_{stem}") is not None]
    if errors:
        parts.append(f"{prefix}: " + ", ".join(errors))
    cost = [f"{row['wall_time_s']:.1f} s elapsed"]
    if row.get("train_structures_per_s"):
        cost.insert(0, f"{row['train_structures_per_s']:.4g} structures/s")
    return "  ".join(parts + [", ".join(cost)])


class TrainingProgress:
    """The terminal side of one :func:`~mmlwf.training.train` call (see the module doc).

    ``bar``: the tqdm bar (None: when stderr is a terminal). ``verbose``: every epoch's line
    in the terminal. ``summary_every``: seconds between two summary lines (None:
    :data:`SUMMARY_EVERY_S`)."""

    def __init__(self, bar: bool | None = None, *, verbose: bool = False,
                 summary_every: float | None = None) -> None:
        self.tty = sys.stderr.isatty()
        self.want_bar = self.tty if bar is None else bool(bar)
        self.verbose = bool(verbose)
        self.summary_every = SUMMARY_EVERY_S if summary_every is None else float(summary_every)
        self.bar = None
        self.last_summary: float | None = None

    # -- lines
    def say(self, text: str) -> None:
        """``text`` to the terminal (through the logger), above the bar."""
        if self.bar is not None:
            self.bar.clear()
        log.info(text)
        if self.bar is not None:
            self.bar.refresh()

    def summary_due(self, epoch_no: int, final: bool) -> bool:
        """Whether the epoch just finished gets a summary line (and remember it if so)."""
        now = time.monotonic()
        due = (final or self.last_summary is None or now - self.last_summary >= self.summary_every)
        if due:
            self.last_summary = now
        return due

    # -- the bar
    def start_epoch(self, epoch: int, max_epochs: int, n: int, done: int) -> None:
        """Epoch ``epoch`` (from 0) of ``max_epochs`` has ``n`` batches, ``done`` of them done."""
        if not self.want_bar:
            return
        total = max(max_epochs, epoch + 1) * n
        desc = f"epoch {epoch + 1}/{max_epochs}"
        if self.bar is None:
            from tqdm import tqdm

            slow = 0.1 if self.tty else max(self.summary_every, 1.0)  # redraws
            self.bar = tqdm(total=total, initial=epoch * n + done, desc=desc, unit="batch", leave=False,
                            dynamic_ncols=True, mininterval=slow, maxinterval=max(slow, 10.0), file=sys.stderr)
        else:
            self.bar.total = total
            self.bar.n = epoch * n + done
            self.bar.set_description(desc, refresh=False)

    def advance(self, n: int, loss: float | None, valid_loss: float | None) -> None:
        """``n`` more batches done; ``loss``: the epoch's mean training loss so far."""
        if self.bar is None:
            return
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4g}"
        if valid_loss is not None:
            post["valid"] = f"{valid_loss:.4g}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def terminal_lines(stream=None) -> Iterator[None]:
    """Show the training's terminal lines (the ``mmlwf.training`` logger at INFO) as plain
    lines on ``stream`` (default stderr): for a command line without a logging set-up."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # not twice when the root logger has a handler too
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
