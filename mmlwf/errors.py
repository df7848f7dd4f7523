"""Errors that carry the file, field and structure index they are about."""

from __future__ import annotations

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
