"""The streaming content checks: one pass over the arrays in chunks of whole molecules.

Per chunk: NaN/Inf in every float field, atomic numbers in range, the smallest interatomic
distance, a hash per structure (duplicates) and the largest force; the energy fit accumulates
its normal equations. Afterwards the global checks (outliers, duplicates) run on the few
numbers kept per molecule. :meth:`Scan.error_findings` and :meth:`Scan.warning_findings`
return the findings.
"""

from __future__ import annotations

import numpy as np

from ..packed import FIELDS, MAX_Z, PackedDataset
from .chunks import Chunk, chunks, molecules_of_rows
from .geometry import DUPLICATE_RESOLUTION, duplicates, min_distances, structure_hashes
from .outliers import EnergyFit, robust_outliers
from .report import ERROR, MAX_INDICES, WARNING, Code, Finding, Severity

FLOAT_FIELDS = ("E", "Qtot", "D", "R", "F", "q", "grid", "esp")


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


class Scan:
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
        self.energy_fit = EnergyFit(N) if "E" in ds.arrays else None

    def run(self) -> None:
        for ch in chunks(self.ds, self.chunk_atoms):
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
        found = robust_outliers(fit.residuals, self.sigma, two_sided=True)
        if found is not None and found[0].size < fit.n_used // 2:
            fit.remove(self.ds, found[0], self.chunk_atoms)
            fit.solve()
            self._energy_residuals()

    def _energy_residuals(self) -> None:
        for ch in chunks(self.ds, self.chunk_atoms):
            Z = np.asarray(self.ds.arrays["Z"][ch.a0 : ch.a1])
            E = np.asarray(self.ds.arrays["E"][ch.m0 : ch.m1], dtype=np.float64)
            self.energy_fit.add_residuals(ch, Z, E)

    def _scan_chunk(self, ch: Chunk) -> None:
        ds, k = self.ds, ch.m1 - ch.m0
        bad = {}  # field -> (k,) bool: molecules with NaN/Inf there
        for name, hits in self.nan_hits.items():
            bad[name] = mask = np.zeros(k, dtype=bool)
            mask[self._nonfinite_molecules(name, ch)] = True
            hits.add(np.flatnonzero(mask) + ch.m0)

        Z = np.asarray(ds.arrays["Z"][ch.a0 : ch.a1])
        bad_atoms = np.flatnonzero((Z < 1) | (Z > MAX_Z))
        bad_z = np.zeros(k, dtype=bool)
        if bad_atoms.size:
            bad_z[molecules_of_rows(bad_atoms, ch.starts)] = True
            self.z_hits.add(np.flatnonzero(bad_z) + ch.m0)
            if len(self.z_values) < 10:
                self.z_values.update(np.unique(Z[bad_atoms])[:10].tolist())

        R = np.asarray(ds.arrays["R"][ch.a0 : ch.a1])
        good_r = ~bad["R"]
        sl = slice(ch.m0, ch.m1)
        cutoff = max(self.too_close, self.close)
        self.dmin[sl] = min_distances(R, ch.starts, ch.counts, good_r, cutoff)
        self.hashes[sl] = structure_hashes(Z, R, ch.starts, ch.counts)
        self.hash_ok[sl] = good_r

        if self.fmax is not None:
            F = np.asarray(ds.arrays["F"][ch.a0 : ch.a1], dtype=np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", F, F))
            fmax = np.maximum.reduceat(norms, ch.starts) if norms.size else np.zeros(0)
            self.fmax[sl] = np.where(bad["F"], np.nan, fmax)
        if self.energy_fit is not None:
            E = np.asarray(ds.arrays["E"][ch.m0 : ch.m1], dtype=np.float64)
            self.energy_fit.accumulate(ch, Z, E, ~(bad_z | bad["E"]))

    def _nonfinite_molecules(self, name: str, ch: Chunk) -> np.ndarray:
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
        return molecules_of_rows(rows, starts) if rows.size else rows

    # -- findings
    def error_findings(self) -> list[Finding]:
        too_close = self.too_close
        out = []
        if self.z_hits.count:
            vals = ", ".join(str(v) for v in sorted(self.z_values)[:10])
            out.append(
                Finding(ERROR, Code.Z_RANGE, "Z", f"atomic numbers outside 1-{MAX_Z} (values {vals})",
                        self.z_hits.first, self.z_hits.count)
            )
        for name, hits in self.nan_hits.items():
            if hits.count:
                out.append(Finding(ERROR, Code.NAN, name, "contains NaN or Inf", hits.first, hits.count))
        close = np.flatnonzero(self.dmin < too_close)
        if close.size:
            out.append(self._distance_finding(ERROR, Code.TOO_CLOSE, close, f"atoms closer than {too_close:g} Å"))
        return out

    def warning_findings(self) -> list[Finding]:
        sigma = self.sigma
        out = []
        close = np.flatnonzero((self.dmin >= self.too_close) & (self.dmin < self.close))
        if close.size:
            out.append(self._distance_finding(WARNING, Code.CLOSE_ATOMS, close, f"atoms closer than {self.close:g} Å"))
        if self.energy_fit is not None and self.energy_fit.ready:
            f = robust_outliers(self.energy_fit.residuals, sigma, two_sided=True)
            if f is not None:
                idx, worst, z, med, scale = f
                out.append(
                    Finding(WARNING, Code.ENERGY_OUTLIER, "E",
                            f"per-atom energy residual of a per-element linear fit beyond {sigma:g} robust sigma "
                            f"(worst: structure {worst}, {z:.1f} sigma; median {med:.4g}, "
                            f"scale {scale:.3g} eV/atom)", idx[:MAX_INDICES], idx.size)
                )
        if self.fmax is not None:
            f = robust_outliers(self.fmax, sigma, two_sided=False)
            if f is not None:
                idx, worst, z, med, scale = f
                out.append(
                    Finding(WARNING, Code.FORCE_OUTLIER, "F",
                            f"largest force norm beyond {sigma:g} robust sigma (worst: structure {worst}, "
                            f"{self.fmax[worst]:.4g} eV/Å, {z:.1f} sigma; median {med:.4g}, "
                            f"scale {scale:.3g} eV/Å)", idx[:MAX_INDICES], idx.size)
                )
        dup = duplicates(self.ds, self.hashes, self.hash_ok, self.chunk_atoms)
        if dup is not None:
            later, earlier = dup
            pairs = ", ".join(f"{j} = {i}" for j, i in zip(later[:10], earlier[:10]))
            more = f" (+{later.size - 10} more)" if later.size > 10 else ""
            out.append(
                Finding(WARNING, Code.DUPLICATE, "R",
                        f"same atomic numbers and positions (to {DUPLICATE_RESOLUTION:g} Å) as an earlier "
                        f"structure (later = earlier: {pairs}{more})", later[:MAX_INDICES], later.size)
            )
        return out

    def _distance_finding(self, level: Severity, code: Code, idx: np.ndarray, what: str) -> Finding:
        worst = int(idx[np.argmin(self.dmin[idx])])
        return Finding(level, code, "R", f"{what} (smallest {self.dmin[worst]:.3g} Å in structure {worst})",
                       idx[:MAX_INDICES], idx.size)
