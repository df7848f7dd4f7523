"""Errors that carry the file, field and structure index they are about."""

from __future__ import annotations

import errno
import os


class DataError(ValueError):
    """Bad input data: rendered as one line naming file, field and structure index."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.index = index
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        if self.index is not None:
            parts.append(f"structure {self.index}")
        head = ": ".join(parts)
        text = " ".join(str(self.message).split())  # one line, whatever the message
        return f"{head}: {text}" if head else text

    def at(self, *, path=None, field=None, index=None) -> "DataError":
        """Return a copy with missing location details filled in."""
        return DataError(
            self.message,
            path=self.path if self.path is not None else path,
            field=self.field if self.field is not None else field,
            index=self.index if self.index is not None else index,
        )


class ConfigError(ValueError):
    """A bad setting (unknown unit, format, key ...): one line naming the setting."""


class OutputError(Exception):
    """An output that cannot be written (read-only location, disk full ...): one line naming
    the output the user asked for, not the temporary file the writer was filling."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: cannot write: {self.reason}")

    @classmethod
    def from_os(cls, path: str | os.PathLike, exc: OSError) -> "OutputError":
        reason = exc.strerror or str(exc)
        name = errno.errorcode.get(exc.errno or 0)
        return cls(path, f"{reason} ({name})" if name else reason)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient (one-line message with epoch, step and structures)."""


#: the errors a user causes and fixes: reported as one line, without a traceback
EXPECTED_ERRORS = (DataError, ConfigError, OutputError, TrainingDiverged, FileExistsError, FileNotFoundError)


def closest(word: object, known) -> str | None:
    """The entry of ``known`` closest to ``word`` (difflib), or None when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return close[0] if close else None


def did_you_mean(word: object, known, prefix: str = "") -> str:
    """``" (did you mean 'PREFIXx'?)"`` for the entry ``x`` of ``known`` closest to ``word``, else ``""``."""
    close = closest(word, known)
    return f" (did you mean '{prefix}{close}'?)" if close is not None else ""


def shown(value: object) -> str:
    """``value`` as a config file spells it: ``null``, ``true``, ``'text'``, ``1e-05``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)
