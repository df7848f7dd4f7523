"""What the Snakemake ``script:`` wrappers in ``scripts/`` share: the rule's log.

Each wrapper is ``with log_to(snakemake.log[0]): <one call>`` of a step of
:mod:`mmlwf.steps` (the functions ``mmlwf <command>`` calls too), mapping
``snakemake.input``/``output``/``params`` onto its arguments. Inside, stdout, stderr and
Python logging go to the terminal and to the rule's log file. Bad input and the like
(:data:`~mmlwf.errors.EXPECTED_ERRORS`: ``DataError``, ``ConfigError``, an output that cannot
be written, a diverged training, a missing or existing file) ends the job with exit status 1
and the one-line reason in both places; any other exception keeps its traceback, which also
goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Iterator

from .errors import EXPECTED_ERRORS

log = logging.getLogger("mmlwf")


class _Tee:
    """A text stream writing to the original stream and to the log file."""

    def __init__(self, stream, log_file) -> None:
        self._stream, self._log = stream, log_file

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # fileno, encoding, ...: those of the original stream
        return getattr(self._stream, name)


def _terminate(signum, frame):  # SIGTERM (snakemake cancel, cluster pre-emption) unwinds
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def log_to(path: str | os.PathLike, level: int = logging.INFO) -> Iterator[None]:
    """Tee stdout, stderr and logging to ``path``; expected errors exit 1 with one line.

    mmlwf's messages from ``level`` up are shown, other libraries' (JAX, orbax) from WARNING
    up only: their INFO lines (e.g. JAX probing for a TPU) are noise in a rule's log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, fh), _Tee(old_err, fh)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        old_level = log.level
        root.addHandler(handler)
        log.setLevel(level)
        old_term = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield
        except EXPECTED_ERRORS as exc:
            print(f"mmlwf: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception:
            fh.write(traceback.format_exc())  # the terminal gets it when the exception propagates
            raise
        finally:
            signal.signal(signal.SIGTERM, old_term)
            root.removeHandler(handler)
            log.setLevel(old_level)
            sys.stdout, sys.stderr = old_out, old_err
