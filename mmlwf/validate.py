"""Integrity report for a packed dataset (``mmlwf validate``).

:func:`validate_dataset` streams over the memory-mapped arrays in chunks of whole molecules
(at most ``chunk_atoms`` atoms plus grid points each), so per-atom data never has to fit in
memory; only a few numbers per molecule are kept (residuals, max forces, hashes).

Errors (the dataset must not be used):

- ``missing_file``, ``size_mismatch``, ``offsets``, ``manifest``, ``unreadable``: what
  :func:`mmlwf.packed.structural_problems` reports (plus files the manifest lists that are
  missing); when there are any, the arrays are not opened and nothing else is checked;
- ``checksum``: an array's SHA-256 differs from the one in the manifest, or the manifest has
  none for it (a dataset mmlwf wrote whose manifest is lost is a ``missing_file`` error);
- ``z_range``: an atomic number outside 1-118;
- ``nan``: NaN or Inf in a float field;
- ``too_close``: two atoms of one structure closer than ``min_distance_error``.

Warnings (worth a look, the dataset is usable):

- ``close_atoms``: two atoms closer than ``min_distance_warning``;
- ``energy_outlier``: the per-atom residual of a per-element linear fit of the energies is a
  robust (median/MAD) outlier;
- ``force_outlier``: the largest force norm of a structure is a robust outlier (too large);
- ``duplicate``: the same atomic numbers and positions (rounded to 1e-5 Å) as an earlier structure;
- ``unverified``: no manifest (the users' legacy layout): no checksums to verify the content.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError
from .fileio import atomic_write
from .integrity import checksum_problems
from .packed import (
    FIELDS,
    MANIFEST,
    PackedDataset,
    read_manifest,
    structural_problems,
)

ERROR = "error"
WARNING = "warning"
MAX_INDICES = 100  # structure indices kept per finding
FLOAT_FIELDS = ("E", "Qtot", "D", "R", "F", "q", "grid", "esp")
KDTREE_ABOVE = 256  # molecules with more atoms use a k-d tree instead of all pairs
DUPLICATE_RESOLUTION = 1e-5  # Å: positions are compared after rounding to this
MIN_FIT_STRUCTURES = 10  # fewer usable structures: no energy/force outlier check
PAIR_BUDGET = 1 << 22  # floats in one batched (k, pairs, 3) difference array
SCALE_FLOOR = 1e-6  # smallest robust scale (eV/atom, eV/Å): round-off is never an outlier
_OFFSET_FIELDS = ("offsets", "n_atoms", "grid_offsets")


# ----------------------------------------------------------------------------- results


@dataclass
class Finding:
    """One kind of problem and the structures that have it."""

    level: str  # "error" | "warning"
    code: str  # short id, e.g. "nan", "too_close", "duplicate"
    field: str  # the field concerned, e.g. "F", "R", "Z", "E", "offsets"
    message: str  # one line
    indices: list[int] = field(default_factory=list)  # at most MAX_INDICES, ascending
    n_total: int | None = None  # how many structures in all (default: len(indices))

    def __post_init__(self) -> None:
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


@dataclass
class ValidationReport:
    """All findings of :func:`validate_dataset` on one dataset."""

    path: str
    n_molecules: int
    n_atoms: int
    findings: list[Finding] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

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
            "findings": [asdict(f) for f in self.findings],
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


# ----------------------------------------------------------------------------- entry point


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

    fatal = _structure_findings(root)
    if fatal:
        report.n_molecules, report.n_atoms = _best_effort_counts(root)
        report.findings = fatal
        return report
    try:
        ds = PackedDataset(root)
    except DataError as exc:  # not expected after the checks above, but never crash
        report.findings = [_from_data_error(exc, root)]
        return report
    report.n_molecules, report.n_atoms = ds.n_molecules, ds.n_atoms_total

    findings: list[Finding] = []
    if ds.manifest is None:
        findings.append(Finding(WARNING, "unverified", "manifest", f"no {MANIFEST} (legacy layout): no checksums, "
                                "the content cannot be verified"))
    elif check_checksums:
        findings += _checksum_findings(ds)
    scan = _Scan(
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


def _structure_findings(root: Path) -> list[Finding]:
    """Findings for missing files, wrong sizes and bad offsets (empty when the arrays open)."""
    try:
        problems = structural_problems(root)
    except OSError as exc:  # e.g. a file that cannot be read at all
        return [Finding(ERROR, "unreadable", "dataset", f"cannot read the dataset: {exc}")]
    return [_from_data_error(p, root) for p in problems]


def _from_data_error(err: DataError, root: Path) -> Finding:
    is_manifest = err.path is not None and Path(err.path).name == MANIFEST
    field_name = err.field or ("manifest" if is_manifest else "dataset")
    if "missing" in err.message or err.message == "not a directory":
        code = "missing_file"
    elif is_manifest and field_name not in ("n_molecules", "n_atoms"):
        code = "manifest"
    elif field_name in _OFFSET_FIELDS and not is_manifest:
        code = "offsets"
    else:
        code = "size_mismatch"
    where = ""
    if err.path is not None and Path(err.path) != root:
        where = f"{Path(err.path).name}: "
    indices, total = _offset_problem_indices(err, root) if code == "offsets" else ([], 0)
    if not indices and err.index is not None:
        indices, total = [err.index], 1
    return Finding(ERROR, code, field_name, where + err.message, indices, total)


def _offset_problem_indices(err: DataError, root: Path) -> tuple[list[int], int]:
    """All structures with the offsets problem whose first index ``err`` names."""
    if err.index is None or err.field not in ("offsets", "n_atoms"):
        return [], 0
    try:
        offsets = np.load(root / FIELDS["offsets"].file, mmap_mode="r")
        n_atoms = np.load(root / FIELDS["n_atoms"].file, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return [], 0
    steps = np.diff(np.asarray(offsets, dtype=np.int64))
    if err.field == "offsets":
        bad = np.flatnonzero(steps <= 0)
    elif steps.shape == n_atoms.shape:
        bad = np.flatnonzero(steps != n_atoms)
    else:
        return [], 0
    if bad.size == 0 or bad[0] != err.index:
        return [], 0
    return bad[:MAX_INDICES].tolist(), int(bad.size)


def _best_effort_counts(root: Path) -> tuple[int, int]:
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
    return [Finding(ERROR, "checksum", p.field or "manifest", f"{Path(p.path).name}: {p.message}") for p in problems]


# ----------------------------------------------------------------------------- streaming scan


class _Hits:
    """Structure indices (ascending) of one problem: the first MAX_INDICES and the count."""

    def __init__(self) -> None:
        self.first: list[int] = []
        self.count = 0

    def add(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx).reshape(-1)
        room = MAX_INDICES - len(self.first)
        if room > 0:
            self.first.extend(int(i) for i in idx[:room])
        self.count += int(idx.size)


@dataclass
class _Chunk:
    """Molecules ``m0:m1`` with their atom rows ``a0:a1`` and local offsets."""

    m0: int
    m1: int
    a0: int
    a1: int
    starts: np.ndarray  # (k,) first atom of each molecule, relative to a0
    counts: np.ndarray  # (k,) atoms per molecule


def _chunks(ds: PackedDataset, chunk_atoms: int) -> Iterator[_Chunk]:
    """Consecutive whole-molecule chunks of at most ``chunk_atoms`` atoms + grid points."""
    offsets = np.asarray(ds.offsets, dtype=np.int64)
    weight = offsets if ds.grid_offsets is None else offsets + np.asarray(ds.grid_offsets, dtype=np.int64)
    m0, N = 0, ds.n_molecules
    while m0 < N:
        m1 = int(np.searchsorted(weight, weight[m0] + chunk_atoms, side="right")) - 1
        m1 = min(max(m1, m0 + 1), N)
        off = offsets[m0 : m1 + 1]
        yield _Chunk(m0, m1, int(off[0]), int(off[-1]), off[:-1] - off[0], np.diff(off))
        m0 = m1


def _molecules_of_rows(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Unique local molecule indices of flat local rows, given each molecule's first row."""
    return np.unique(np.searchsorted(starts, rows, side="right") - 1)


class _Scan:
    """One streaming pass collecting every per-chunk check, then the global ones."""

    def __init__(
        self,
        ds: PackedDataset,
        chunk_atoms: int,
        *,
        min_distance_error: float,
        min_distance_warning: float,
        outlier_sigma: float,
    ) -> None:
        self.ds = ds
        self.chunk_atoms = chunk_atoms
        self.too_close = min_distance_error
        self.close = min_distance_warning
        self.sigma = outlier_sigma
        N = ds.n_molecules
        self.z_hits = _Hits()
        self.z_values: set[int] = set()
        self.nan_hits = {name: _Hits() for name in FLOAT_FIELDS if name in ds.arrays}
        self.dmin = np.full(N, np.inf)  # smallest distance (exact at least below both thresholds)
        self.hashes = np.zeros(N, dtype=np.uint64)
        self.hash_ok = np.zeros(N, dtype=bool)
        self.fmax = np.full(N, np.nan) if "F" in ds.arrays else None
        self.energy_fit = _EnergyFit(N) if "E" in ds.arrays else None

    def run(self) -> None:
        for ch in _chunks(self.ds, self.chunk_atoms):
            self._scan_chunk(ch)
        fit = self.energy_fit
        if fit is None:
            return
        fit.solve()
        if not fit.ready:
            return
        self._energy_residuals()
        # outliers pull a least-squares fit towards them (and can hide each other in small
        # datasets): fit once more without them, then score every structure again
        found = _outlier_finding(fit.residuals, self.sigma, two_sided=True)
        if found is not None and found[0].size < fit.n_used // 2:
            fit.remove(self.ds, found[0], self.chunk_atoms)
            fit.solve()
            self._energy_residuals()

    def _energy_residuals(self) -> None:
        for ch in _chunks(self.ds, self.chunk_atoms):
            Z = np.asarray(self.ds.arrays["Z"][ch.a0 : ch.a1])
            E = np.asarray(self.ds.arrays["E"][ch.m0 : ch.m1], dtype=np.float64)
            self.energy_fit.add_residuals(ch, Z, E)

    def _scan_chunk(self, ch: _Chunk) -> None:
        ds, k = self.ds, ch.m1 - ch.m0
        bad = {}  # field -> (k,) bool: molecules with NaN/Inf there
        for name, hits in self.nan_hits.items():
            bad[name] = mask = np.zeros(k, dtype=bool)
            mask[self._nonfinite_molecules(name, ch)] = True
            hits.add(np.flatnonzero(mask) + ch.m0)

        Z = np.asarray(ds.arrays["Z"][ch.a0 : ch.a1])
        bad_atoms = np.flatnonzero((Z < 1) | (Z > 118))
        bad_z = np.zeros(k, dtype=bool)
        if bad_atoms.size:
            bad_z[_molecules_of_rows(bad_atoms, ch.starts)] = True
            self.z_hits.add(np.flatnonzero(bad_z) + ch.m0)
            if len(self.z_values) < 10:
                self.z_values.update(np.unique(Z[bad_atoms])[:10].tolist())

        R = np.asarray(ds.arrays["R"][ch.a0 : ch.a1])
        good_r = ~bad["R"]
        sl = slice(ch.m0, ch.m1)
        cutoff = max(self.too_close, self.close)
        self.dmin[sl] = _min_distances(R, ch.starts, ch.counts, good_r, cutoff)
        self.hashes[sl] = _structure_hashes(Z, R, ch.starts, ch.counts)
        self.hash_ok[sl] = good_r

        if self.fmax is not None:
            F = np.asarray(ds.arrays["F"][ch.a0 : ch.a1], dtype=np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", F, F))
            fmax = np.maximum.reduceat(norms, ch.starts) if norms.size else np.zeros(0)
            self.fmax[sl] = np.where(bad["F"], np.nan, fmax)
        if self.energy_fit is not None:
            E = np.asarray(ds.arrays["E"][ch.m0 : ch.m1], dtype=np.float64)
            self.energy_fit.accumulate(ch, Z, E, ~(bad_z | bad["E"]))

    def _nonfinite_molecules(self, name: str, ch: _Chunk) -> np.ndarray:
        ds, spec = self.ds, FIELDS[name]
        if spec.per == "molecule":
            block = np.asarray(ds.arrays[name][ch.m0 : ch.m1])
            return np.flatnonzero(~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1))
        if spec.per == "atom":
            block = np.asarray(ds.arrays[name][ch.a0 : ch.a1])
            starts = ch.starts
        else:  # per grid point
            goff = np.asarray(ds.grid_offsets[ch.m0 : ch.m1 + 1], dtype=np.int64)
            block = np.asarray(ds.arrays[name][goff[0] : goff[-1]])
            starts = goff[:-1] - goff[0]
        rows = np.flatnonzero(~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1))
        return _molecules_of_rows(rows, starts) if rows.size else rows

    # -- findings
    def error_findings(self) -> list[Finding]:
        too_close = self.too_close
        out = []
        if self.z_hits.count:
            vals = ", ".join(str(v) for v in sorted(self.z_values)[:10])
            out.append(
                Finding(ERROR, "z_range", "Z", f"atomic numbers outside 1-118 (values {vals})",
                        self.z_hits.first, self.z_hits.count)
            )
        for name, hits in self.nan_hits.items():
            if hits.count:
                out.append(Finding(ERROR, "nan", name, "contains NaN or Inf", hits.first, hits.count))
        close = np.flatnonzero(self.dmin < too_close)
        if close.size:
            out.append(self._distance_finding(ERROR, "too_close", close, f"atoms closer than {too_close:g} Å"))
        return out

    def warning_findings(self) -> list[Finding]:
        sigma = self.sigma
        out = []
        close = np.flatnonzero((self.dmin >= self.too_close) & (self.dmin < self.close))
        if close.size:
            out.append(self._distance_finding(WARNING, "close_atoms", close, f"atoms closer than {self.close:g} Å"))
        if self.energy_fit is not None and self.energy_fit.ready:
            f = _outlier_finding(self.energy_fit.residuals, sigma, two_sided=True)
            if f is not None:
                idx, worst, z, med, scale = f
                out.append(
                    Finding(WARNING, "energy_outlier", "E",
                            f"per-atom energy residual of a per-element linear fit beyond {sigma:g} robust sigma "
                            f"(worst: structure {worst}, {z:.1f} sigma; median {med:.4g}, "
                            f"scale {scale:.3g} eV/atom)", idx[:MAX_INDICES], idx.size)
                )
        if self.fmax is not None:
            f = _outlier_finding(self.fmax, sigma, two_sided=False)
            if f is not None:
                idx, worst, z, med, scale = f
                out.append(
                    Finding(WARNING, "force_outlier", "F",
                            f"largest force norm beyond {sigma:g} robust sigma (worst: structure {worst}, "
                            f"{self.fmax[worst]:.4g} eV/Å, {z:.1f} sigma; median {med:.4g}, "
                            f"scale {scale:.3g} eV/Å)", idx[:MAX_INDICES], idx.size)
                )
        dup = _duplicates(self.ds, self.hashes, self.hash_ok, self.chunk_atoms)
        if dup is not None:
            later, earlier = dup
            pairs = ", ".join(f"{j} = {i}" for j, i in zip(later[:10], earlier[:10]))
            more = f" (+{later.size - 10} more)" if later.size > 10 else ""
            out.append(
                Finding(WARNING, "duplicate", "R",
                        f"same atomic numbers and positions (to {DUPLICATE_RESOLUTION:g} Å) as an earlier "
                        f"structure (later = earlier: {pairs}{more})", later[:MAX_INDICES], later.size)
            )
        return out

    def _distance_finding(self, level: str, code: str, idx: np.ndarray, what: str) -> Finding:
        worst = int(idx[np.argmin(self.dmin[idx])])
        return Finding(level, code, "R", f"{what} (smallest {self.dmin[worst]:.3g} Å in structure {worst})",
                       idx[:MAX_INDICES], idx.size)


# ----------------------------------------------------------------------------- distances


def _batches(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of items whose sizes add up to at most ``budget``
    (at least one item each)."""
    ends = np.cumsum(sizes)
    b0 = 0
    while b0 < ends.size:
        done = int(ends[b0 - 1]) if b0 else 0
        b1 = max(b0 + 1, int(np.searchsorted(ends, done + budget, side="right")))
        yield b0, b1
        b0 = b1


def _min_distances(
    R: np.ndarray, starts: np.ndarray, counts: np.ndarray, use: np.ndarray, cutoff: float
) -> np.ndarray:
    """Smallest interatomic distance of each molecule (inf for one atom or ``~use``).

    Molecules of up to ``KDTREE_ABOVE`` atoms are grouped by size and all pairs computed
    as batched ``(k, pairs, 3)`` arrays of at most ``PAIR_BUDGET`` floats; larger ones use a
    k-d tree, for which only distances below ``cutoff`` are exact (inf otherwise).
    """
    dmin = np.full(counts.shape[0], np.inf)
    for n in np.unique(counts):
        n = int(n)
        if n < 2:
            continue
        sel = np.flatnonzero((counts == n) & use)
        if n > KDTREE_ABOVE:
            from scipy.spatial import cKDTree

            for m in sel:
                pos = R[starts[m] : starts[m] + n].astype(np.float64)
                pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")
                if pairs.size:
                    dmin[m] = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1).min()
            continue
        i, j = np.triu_indices(n, 1)
        batch = max(1, PAIR_BUDGET // (3 * i.size))
        atom = np.arange(n)
        for b in range(0, sel.size, batch):
            ms = sel[b : b + batch]
            pos = R[starts[ms][:, None] + atom]  # (k, n, 3)
            diff = pos[:, i] - pos[:, j]  # (k, pairs, 3)
            dmin[ms] = np.sqrt(np.einsum("kpc,kpc->kp", diff, diff).min(axis=1))
    return dmin


# ----------------------------------------------------------------------------- duplicates

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _rounded(R: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(R, dtype=np.float64) / DUPLICATE_RESOLUTION).astype(np.int64)


def _structure_hashes(Z: np.ndarray, R: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A 64-bit hash per molecule of its size, atom order, atomic numbers and rounded positions."""
    if Z.size == 0:
        return np.zeros(counts.shape[0], dtype=np.uint64)
    with np.errstate(invalid="ignore"):  # NaN positions: hash is ignored for those molecules
        q = _rounded(R).view(np.uint64)
    position = (np.arange(Z.shape[0]) - np.repeat(starts, counts)).astype(np.uint64)
    h = _mix(position ^ _mix(Z.astype(np.int64).view(np.uint64)))
    for c in range(3):
        h = _mix(h ^ q[:, c])
    return _mix(np.add.reduceat(h, starts) ^ counts.astype(np.uint64))


def _duplicates(
    ds: PackedDataset, hashes: np.ndarray, usable: np.ndarray, chunk_atoms: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(later copies, the earlier structure each duplicates), both ascending by later index.

    Candidates share a hash; each is confirmed by comparing the stored rows exactly.
    """
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return None
    order = idx[np.argsort(hashes[idx], kind="stable")]  # ties keep ascending structure order
    h = hashes[order]
    same = h[1:] == h[:-1]
    if not same.any():
        return None
    group = np.cumsum(np.concatenate([[True], ~same])) - 1
    first = order[np.flatnonzero(np.concatenate([[True], ~same]))]
    later = order[1:][same]
    earlier = first[group[1:][same]]
    n_atoms = np.asarray(ds.n_atoms)
    keep = n_atoms[later] == n_atoms[earlier]
    later, earlier = later[keep], earlier[keep]
    # confirm in batches of bounded size
    confirmed = np.zeros(later.size, dtype=bool)
    for b0, b1 in _batches(n_atoms[later], chunk_atoms):
        a = ds.gather(later[b0:b1], fields=("Z", "R"))
        e = ds.gather(earlier[b0:b1], fields=("Z", "R"))
        equal = (a["Z"] == e["Z"]) & (_rounded(a["R"]) == _rounded(e["R"])).all(axis=1)
        confirmed[b0:b1] = np.logical_and.reduceat(equal, a["offsets"][:-1])
    later, earlier = later[confirmed], earlier[confirmed]
    if later.size == 0:
        return None
    sort = np.argsort(later)
    return later[sort], earlier[sort]


# ----------------------------------------------------------------------------- outliers


class _EnergyFit:
    """Least squares of E on element counts, accumulated as normal equations per chunk."""

    def __init__(self, n_molecules: int) -> None:
        self.n_molecules = n_molecules
        self.XtX = np.zeros((119, 119))
        self.Xty = np.zeros(119)
        self.n_used = 0
        self.weights: np.ndarray | None = None
        self.residuals: np.ndarray | None = None

    @staticmethod
    def _counts(ch: _Chunk, Z: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element-count matrix ``(k, m)`` of a chunk (rows of unused molecules zero) and its Z."""
        k = ch.counts.shape[0]
        Zu = np.where(np.repeat(use, ch.counts), Z, 0)  # unused molecules: dummy element 0
        elements = np.flatnonzero(np.bincount(Zu, minlength=119))
        column = np.zeros(119, dtype=np.int64)
        column[elements] = np.arange(elements.size)
        mol = np.repeat(np.arange(k), ch.counts)
        X = np.bincount(mol * elements.size + column[Zu], minlength=k * elements.size)
        X = X.reshape(k, elements.size).astype(np.float64)
        X[:, elements == 0] = 0.0
        return X, elements

    def accumulate(self, ch: _Chunk, Z: np.ndarray, E: np.ndarray, use: np.ndarray) -> None:
        X, el = self._counts(ch, Z, use)
        self.XtX[np.ix_(el, el)] += X.T @ X
        self.Xty[el] += X.T @ np.where(use, E, 0.0)
        self.n_used += int(use.sum())

    def remove(self, ds: PackedDataset, idx: np.ndarray, chunk_atoms: int) -> None:
        """Take the structures ``idx`` (all used in the fit) out of the normal equations."""
        for b0, b1 in _batches(np.asarray(ds.n_atoms)[idx], chunk_atoms):
            rows = ds.gather(idx[b0:b1], fields=("Z", "E"))
            ch = _Chunk(0, b1 - b0, 0, int(rows["offsets"][-1]), rows["offsets"][:-1], rows["n_atoms"])
            X, el = self._counts(ch, rows["Z"], np.ones(b1 - b0, dtype=bool))
            self.XtX[np.ix_(el, el)] -= X.T @ X
            self.Xty[el] -= X.T @ np.asarray(rows["E"], dtype=np.float64)
        self.n_used -= int(idx.size)

    def solve(self) -> None:
        if self.n_used < MIN_FIT_STRUCTURES:
            return
        el = np.flatnonzero(np.diag(self.XtX) > 0)
        w = np.zeros(119)
        w[el] = np.linalg.lstsq(self.XtX[np.ix_(el, el)], self.Xty[el], rcond=None)[0]
        self.weights = w
        self.residuals = np.full(self.n_molecules, np.nan)

    @property
    def ready(self) -> bool:
        return self.weights is not None

    def add_residuals(self, ch: _Chunk, Z: np.ndarray, E: np.ndarray) -> None:
        use = np.isfinite(E) & ~np.logical_or.reduceat((Z < 1) | (Z > 118), ch.starts)
        X, el = self._counts(ch, Z, use)
        self.residuals[ch.m0 : ch.m1] = np.where(use, (E - X @ self.weights[el]) / ch.counts, np.nan)


def _outlier_finding(values: np.ndarray, sigma: float, *, two_sided: bool):
    """Indices with robust z-score beyond ``sigma``, the worst, its z, median and scale.

    The scale is 1.4826·MAD, else 1.2533·mean absolute deviation when MAD is 0, floored
    at ``SCALE_FLOOR``. NaN values are ignored; returns None without outliers or data.
    """
    finite = values[np.isfinite(values)]
    if finite.size < MIN_FIT_STRUCTURES:
        return None
    med = float(np.median(finite))
    dev = np.abs(finite - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= SCALE_FLOOR:
        scale = 1.2533 * float(dev.mean())
    scale = max(scale, SCALE_FLOOR)
    with np.errstate(invalid="ignore"):
        z = (values - med) / scale
        score = np.abs(z) if two_sided else z
        idx = np.flatnonzero(score > sigma)
    if idx.size == 0:
        return None
    worst = int(idx[np.argmax(score[idx])])
    return idx, worst, float(z[worst]), med, scale
