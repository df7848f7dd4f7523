"""``mmlwf <command>``: the command line.

The commands and the workflow's rules call the same steps (:mod:`mmlwf.steps`) with the
same defaults; the parsers and handlers live in :mod:`mmlwf.commands` by command group.

Every command exits 0 on success. Exit codes otherwise: 2 for anything the user can cause
and fix (bad input data or settings, an output that cannot be written, a training whose loss
became NaN or infinite), with one line naming the file (and field and structure where there
is one) and no traceback; 1 for ``validate`` findings; 3 for an aborted ``md``; 75 for an
interrupted training (checkpoint written: run again to resume); 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

from . import __version__
from .commands import data, runs
from .commands.common import Parser, resolve_defaults
from .errors import EXPECTED_ERRORS


def build_parser() -> argparse.ArgumentParser:
    """The ``mmlwf`` parser with every command's subparser."""
    parser = Parser(prog="mmlwf", description="Machine-learned force-field workflow: data, training, evaluation.")
    parser.add_argument("--version", action="version", version=f"mmlwf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    data.add_commands(sub)
    runs.add_commands(sub)
    return parser


def _terminate(signum, frame):  # pragma: no cover - exercised through subprocess tests
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mmlwf`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (cluster pre-emption, snakemake cancel) unwinds like Ctrl-C: temporaries are removed
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(resolve_defaults(args)) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"mmlwf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmlwf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
