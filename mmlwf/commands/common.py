"""What the command groups share: the one-line usage errors, the terminal printer, defaults
taken from the library's signatures, and the ESP point options."""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import sys
from typing import Any


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Terminal:
    """A step's lines (:class:`mmlwf.steps._common.Out`) for the terminal: results and
    warnings on stdout, errors on stderr."""

    def info(self, msg: str, /, *args: Any) -> None:
        print(msg % args if args else msg)

    warning = info

    def error(self, msg: str, /, *args: Any) -> None:
        print(msg % args if args else msg, file=sys.stderr)


TERMINAL = Terminal()


class LibraryDefault:
    """An option's default: that of the library function ``target``'s (``"module:function"``)
    parameter ``name``, so options show the library's defaults instead of restating them.

    The module is imported only when the value is needed (``--help``, or the option was not
    given: :func:`resolve_defaults`), so the CLI starts without numpy, numba or ase."""

    def __init__(self, target: str, name: str) -> None:
        self.target, self.name = target, name

    @functools.cached_property
    def value(self) -> Any:
        module, func = self.target.split(":")
        value = inspect.signature(getattr(importlib.import_module(module), func)).parameters[self.name].default
        if value is inspect.Parameter.empty:
            raise TypeError(f"{self.target}({self.name}) has no default")
        return value

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


def default_of(target: str, name: str) -> LibraryDefault:
    """The default of parameter ``name`` of ``target`` (``"module:function"``), read on use."""
    return LibraryDefault(target, name)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Replace the :class:`LibraryDefault` values of options not given by their values."""
    for key, value in vars(args).items():
        if isinstance(value, LibraryDefault):
            setattr(args, key, value.value)
    return args


def add_point_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, spacing: bool) -> None:
    """``--select``/``--vdw-*``/``--density-window``/``--max-points``/``--seed`` (and
    ``--spacing`` where points are generated): the fields of
    :class:`mmlwf.esp.points.PointSettings`."""
    default = "shell" if spacing else "density with --density cubes, else shell"
    p.add_argument("--select", choices=["shell", "density"],
                   help=f"ESP point selection: vdW shell, or electron density window (default: {default})")
    p.add_argument("--vdw-inner", dest="inner", type=float, metavar="X",
                   help="keep points outside X times every vdW radius (default 1.4 shell, 1.0 density)")
    p.add_argument("--vdw-outer", dest="outer", type=float, metavar="X",
                   help="shell: keep points within X times some vdW radius (default 2.0)")
    p.add_argument("--density-window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="density mode: electron density window in e/Bohr^3 (default 1e-4 1e-3)")
    if spacing:
        p.add_argument("--spacing", type=float, metavar="A", help="candidate grid step in Å (default 0.5)")
    p.add_argument("--max-points", type=int, metavar="N", help="keep at most N points per structure (default all)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of that subsampling (default 0)")


def point_options(args: argparse.Namespace) -> dict[str, Any]:
    """The point options given (None: not given), as PointSettings' field names."""
    names = ("inner", "outer", "density_window", "spacing", "max_points", "seed")
    return {"mode": args.select, **{k: getattr(args, k, None) for k in names}}
