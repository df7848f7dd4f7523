"""Graceful stops of a training: SIGTERM/SIGINT, and the exit codes of the run's statuses.

A first SIGTERM or SIGINT sets :class:`StopFlag`; the loop finishes the step in progress,
writes a ``latest`` checkpoint and returns "interrupted". A second SIGINT aborts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

#: process exit codes for the statuses :func:`~mmlwf.training.train` returns; "interrupted"
#: (SIGTERM/SIGINT, checkpoint written, run again to resume) is EX_TEMPFAIL so that a
#: workflow manager treats the job as unfinished and re-runs (= resumes) it.
EXIT_INTERRUPTED = 75
EXIT_CODES = {"completed": 0, "early_stopped": 0, "time_limit": 0, "interrupted": EXIT_INTERRUPTED}


def exit_code(summary: Mapping) -> int:
    """The process exit code for a :func:`~mmlwf.training.train` summary (:data:`EXIT_CODES`)."""
    return EXIT_CODES.get(summary.get("status"), 1)


class StopFlag:
    """Set by SIGTERM/SIGINT (``signum``); the loop stops after the step in progress."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def signal_handlers(flag: StopFlag) -> Iterator[None]:
    """Install the graceful-stop handlers for the duration of a training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
