"""Validation findings and the report: what ``mmlwf validate`` prints and the rule writes.

Each check produces :class:`Finding` objects directly, classified by a :class:`Code` and a
:class:`Severity` where the problem is found; nothing reads a message to classify it. The
report's JSON (:meth:`ValidationReport.to_dict`) holds the settings and every finding with
its code, field, message and at most :data:`MAX_INDICES` structure indices.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import StrEnum

from ..fileio import atomic_write
from ..packed import ProblemKind

MAX_INDICES = 100  # structure indices kept per finding


class Severity(StrEnum):
    """An error means the dataset must not be used; a warning is worth a look."""

    ERROR = "error"
    WARNING = "warning"


ERROR = Severity.ERROR
WARNING = Severity.WARNING


class Code(StrEnum):
    """What a finding is about (the module docstring of :mod:`mmlwf.validate` lists them)."""

    # structural (mmlwf.packed's checks classify these where they find them)
    MISSING_FILE = ProblemKind.MISSING_FILE.value
    SIZE_MISMATCH = ProblemKind.SIZE_MISMATCH.value
    OFFSETS = ProblemKind.OFFSETS.value
    MANIFEST = ProblemKind.MANIFEST.value
    UNREADABLE = "unreadable"
    # content
    CHECKSUM = "checksum"
    Z_RANGE = "z_range"
    NAN = "nan"
    TOO_CLOSE = "too_close"
    # warnings
    CLOSE_ATOMS = "close_atoms"
    ENERGY_OUTLIER = "energy_outlier"
    FORCE_OUTLIER = "force_outlier"
    DUPLICATE = "duplicate"
    UNVERIFIED = "unverified"


@dataclass
class Finding:
    """One kind of problem and the structures that have it."""

    level: Severity  # "error" | "warning"
    code: Code | str  # short id, e.g. "nan", "too_close", "duplicate"
    field: str  # the field concerned, e.g. "F", "R", "Z", "E", "offsets"
    message: str  # one line
    indices: list[int] = field(default_factory=list)  # at most MAX_INDICES, ascending
    n_total: int | None = None  # how many structures in all (default: len(indices))

    def __post_init__(self) -> None:
        self.level = Severity(self.level)
        self.code = Code(self.code) if self.code in Code._value2member_map_ else str(self.code)
        self.indices = [int(i) for i in self.indices]
        self.n_total = len(self.indices) if self.n_total is None else int(self.n_total)
        del self.indices[MAX_INDICES:]
        self.message = " ".join(str(self.message).split())

    def one_line(self, shown: int = 10) -> str:
        """E.g. ``error [nan] field 'F' structures 3, 17 (+5 more): contains NaN or Inf``."""
        where = f"field '{self.field}'"
        if self.n_total:
            listed = self.indices[:shown]
            noun = "structure" if self.n_total == 1 else "structures"
            where += f" {noun} " + ", ".join(map(str, listed))
            more = self.n_total - len(listed)
            if more > 0:
                where += f" (+{more} more)"
        return f"{self.level} [{self.code}] {where}: {self.message}"

    def to_dict(self) -> dict:
        """The finding as the report's JSON holds it (plain strings and integers)."""
        return {
            "level": str(self.level),
            "code": str(self.code),
            "field": self.field,
            "message": self.message,
            "indices": list(self.indices),
            "n_total": self.n_total,
        }


@dataclass
class ValidationReport:
    """All findings of :func:`~mmlwf.validate.validate_dataset` on one dataset."""

    path: str
    n_molecules: int
    n_atoms: int
    findings: list[Finding] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def summary(self) -> str:
        """Readable lines: one per finding, then a verdict."""
        lines = [f.one_line() for f in self.findings]
        verdict = "valid" if self.ok else "INVALID"
        lines.append(
            f"{self.path}: {verdict} ({self.n_molecules} structures, {self.n_atoms} atoms, "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s))"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "n_molecules": self.n_molecules,
            "n_atoms": self.n_atoms,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "settings": dict(self.settings),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ValidationReport":
        return cls(
            path=data["path"],
            n_molecules=int(data["n_molecules"]),
            n_atoms=int(data["n_atoms"]),
            findings=[Finding(**f) for f in data.get("findings", [])],
            settings=dict(data.get("settings", {})),
        )

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the report as JSON atomically (temporary file in the same folder, then rename)."""
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> "ValidationReport":
        with open(path) as fh:
            return cls.from_dict(json.load(fh))
