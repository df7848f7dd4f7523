""":func:`validate_dataset`: the structural checks, the checksums, then the streaming scan."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..integrity import checksum_problems
from ..packed import FIELDS, MANIFEST, PackedDataset, Problem, check_structure, read_manifest
from .report import ERROR, MAX_INDICES, WARNING, Code, Finding, ValidationReport
from .scan import Scan


def validate_dataset(
    path: str | os.PathLike,
    *,
    min_distance_error: float = 0.1,
    min_distance_warning: float = 0.5,
    outlier_sigma: float = 8.0,
    check_checksums: bool = True,
    chunk_atoms: int = 1 << 22,
) -> ValidationReport:
    """Check a packed dataset directory and return every finding (never raises on bad data).

    Distances are in Å. ``outlier_sigma`` is the robust z-score (median/MAD) above which
    energies and forces are flagged. ``chunk_atoms`` bounds the rows read at once.
    """
    root = Path(path)
    settings = {
        "min_distance_error": float(min_distance_error),
        "min_distance_warning": float(min_distance_warning),
        "outlier_sigma": float(outlier_sigma),
        "check_checksums": bool(check_checksums),
    }
    report = ValidationReport(path=str(root), n_molecules=0, n_atoms=0, settings=settings)

    ds, fatal = _open(root)
    if ds is None:
        report.n_molecules, report.n_atoms = _best_effort_counts(root)
        report.findings = fatal
        return report
    report.n_molecules, report.n_atoms = ds.n_molecules, ds.n_atoms_total

    findings: list[Finding] = []
    if ds.manifest is None:
        findings.append(Finding(WARNING, Code.UNVERIFIED, "manifest", f"no {MANIFEST} (legacy layout): no "
                                "checksums, the content cannot be verified"))
    elif check_checksums:
        findings += _checksum_findings(ds)
    scan = Scan(
        ds,
        max(int(chunk_atoms), 1),
        min_distance_error=settings["min_distance_error"],
        min_distance_warning=settings["min_distance_warning"],
        outlier_sigma=settings["outlier_sigma"],
    )
    scan.run()
    findings += scan.error_findings()
    findings += scan.warning_findings()
    report.findings = findings
    return report


# ----------------------------------------------------------------------------- structural


def _open(root: Path) -> tuple[PackedDataset | None, list[Finding]]:
    """The dataset opened on what the structural checks read, or None and their findings
    (missing files, wrong sizes, bad offsets, a bad manifest): nothing else is checked then."""
    try:
        layout, problems = check_structure(root)
        if layout is not None:
            return PackedDataset.from_layout(layout), []
    except OSError as exc:  # e.g. a file that cannot be read at all
        return None, [Finding(ERROR, Code.UNREADABLE, "dataset", f"cannot read the dataset: {exc}")]
    return None, [_problem_finding(p, root) for p in problems]


def _problem_finding(problem: Problem, root: Path) -> Finding:
    """A structural problem as a finding: its kind is the code; the file name leads the message."""
    path = problem.path
    field_name = problem.field or ("manifest" if path.name == MANIFEST else "dataset")
    where = f"{path.name}: " if path != root else ""
    indices = problem.indices
    return Finding(ERROR, Code(problem.kind), field_name, where + problem.message, indices[:MAX_INDICES], indices.size)


def _best_effort_counts(root: Path) -> tuple[int, int]:
    """The counts of a dataset that does not open, for the report: the manifest's, else the
    offsets', else zero."""
    try:
        manifest = read_manifest(root)
        if manifest is not None:
            return int(manifest.get("n_molecules", 0)), int(manifest.get("n_atoms", 0))
        offsets = np.load(root / FIELDS["offsets"].file, mmap_mode="r")
        return max(int(offsets.shape[0]) - 1, 0), int(offsets[-1])
    except Exception:
        return 0, 0


def _checksum_findings(ds: PackedDataset) -> list[Finding]:
    """Fields whose content differs from the manifest's SHA-256, or that have none (every
    file hashed, never taken from a record; the results are recorded for train/evaluate)."""
    try:
        problems = checksum_problems(ds.path, use_records=False)[0]
    except DataError as exc:  # e.g. an unreadable marker
        problems = [exc]
    return [Finding(ERROR, Code.CHECKSUM, p.field or "manifest", f"{Path(p.path).name}: {p.message}")
            for p in problems]
