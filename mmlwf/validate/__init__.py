"""Integrity report for a packed dataset (``mmlwf validate``).

:func:`validate_dataset` streams over the memory-mapped arrays in chunks of whole molecules
(at most ``chunk_atoms`` atoms plus grid points each), so per-atom data never has to fit in
memory; only a few numbers per molecule are kept (residuals, max forces, hashes). Every check
returns :class:`Finding` objects classified where the problem is found (:class:`Code`,
:class:`Severity`).

Errors (the dataset must not be used):

- ``missing_file``, ``size_mismatch``, ``offsets``, ``manifest``, ``unreadable``: what
  :func:`mmlwf.packed.check_structure` reports (plus files the manifest lists that are
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

Modules: :mod:`.report` (findings, report, JSON), :mod:`.dataset` (:func:`validate_dataset`),
:mod:`.scan` (the streaming pass), :mod:`.geometry` (distances, duplicates), :mod:`.outliers`
(energy fit, robust z-scores), :mod:`.chunks` (bounded-memory iteration).
"""

from .dataset import validate_dataset
from .geometry import DUPLICATE_RESOLUTION, KDTREE_ABOVE, PAIR_BUDGET, min_distances
from .outliers import MIN_FIT_STRUCTURES, SCALE_FLOOR
from .report import ERROR, MAX_INDICES, WARNING, Code, Finding, Severity, ValidationReport
from .scan import FLOAT_FIELDS

__all__ = [
    "DUPLICATE_RESOLUTION",
    "ERROR",
    "FLOAT_FIELDS",
    "KDTREE_ABOVE",
    "MAX_INDICES",
    "MIN_FIT_STRUCTURES",
    "PAIR_BUDGET",
    "SCALE_FLOOR",
    "WARNING",
    "Code",
    "Finding",
    "Severity",
    "ValidationReport",
    "min_distances",
    "validate_dataset",
]
