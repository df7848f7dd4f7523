"""A pass over the frame layout of an (ext)xyz file before ASE parses it.

ASE indexes an xyz file by reading each count line and skipping that many lines, without
checking that they exist: a truncated file then fails with a traceback, and an absurd count
(``999999999999``) skips lines past the end of the file for ever. This pass reads the count
lines the same way, bounds each count by what the rest of the file can hold, and names the
line and structure of the first defect.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from ..errors import DataError

#: bytes an atom line takes at the least (one character and its newline): bounds a count line
MIN_ATOM_LINE_BYTES = 2


def _shown(line: bytes) -> str:
    text = line.strip().decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")


def check_xyz_layout(path: Path, fail: Callable[..., DataError]) -> int:
    """Check every frame's count line against the lines that follow; return the number of
    frames. ``fail(message, index=...)`` builds the error (the source's, naming the file)."""
    from ase.io.formats import get_compression, open_with_compression

    compressed = get_compression(str(path))[1] is not None
    size = None if compressed else path.stat().st_size
    frame, line_no = 0, 0
    with open_with_compression(str(path), "rb") as fh:
        while True:
            line = fh.readline()
            line_no += 1
            if not line:
                return frame
            text = line.strip()
            if not text:  # ASE stops reading at a blank count line: nothing may follow it
                for extra in fh:
                    line_no += 1
                    if extra.strip():
                        raise fail(f"line {line_no}: more data after a blank line (line {line_no - 1} or "
                                   "before); ASE would stop reading at the blank line and drop the rest")
                return frame
            if frame and text.startswith(b"VEC"):  # extxyz lattice vectors after a frame
                continue
            try:
                count = int(text)
            except ValueError:
                hint = f" (does the count line of structure {frame - 1} match its atoms?)" if frame else ""
                raise fail(f"line {line_no}: expected the atom count of structure {frame}, got "
                           f"{_shown(line)}{hint}", index=frame) from None
            if count < 0:
                raise fail(f"line {line_no}: negative atom count {count}", index=frame)
            if not fh.readline():
                raise fail(f"truncated right after the count line (line {line_no}): no comment line "
                           "and no atoms", index=frame)
            if size is not None and count * MIN_ATOM_LINE_BYTES > size - fh.tell() + 1:
                raise fail(f"line {line_no}: declares {count} atoms, more than the remaining "
                           f"{size - fh.tell()} bytes of the file can hold", index=frame)
            got = sum(1 for _ in itertools.islice(fh, count))
            if got < count:
                raise fail(f"the count line (line {line_no}) declares {count} atoms but the file ends "
                           f"after {got} (truncated, or a wrong count)", index=frame)
            line_no += 1 + count
            frame += 1
