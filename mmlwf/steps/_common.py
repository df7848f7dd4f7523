"""What the steps share: the output protocol, the module logger, path lists."""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol, Sequence

log = logging.getLogger("mmlwf")


class Out(Protocol):
    """Where a step's lines go: a :class:`logging.Logger`, or the CLI's terminal printer."""

    def info(self, msg: str, /, *args: Any) -> None: ...

    def warning(self, msg: str, /, *args: Any) -> None: ...

    def error(self, msg: str, /, *args: Any) -> None: ...


def listed(value: str | os.PathLike | Sequence[str | os.PathLike] | None, n: int = 1) -> list:
    """``[value]`` for one path, the items for a list of paths (Snakemake's named inputs, a
    repeated CLI option); ``n`` Nones for None."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
