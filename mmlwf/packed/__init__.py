"""The packed dataset: a directory of flat binary arrays plus ``manifest.json``.

- :mod:`.format`: the on-disk layout (files, dtypes, shapes, units, manifest and marker);
- :mod:`.writer`: :class:`PackedWriter` streams structures into a temporary directory in
  bounded memory and renames it into place only when complete;
- :mod:`.reader`: :class:`PackedDataset` memory-maps the arrays;
- :mod:`.checks`: :func:`read_manifest` and the structural checks
  (:func:`check_structure`, :func:`structural_problems`) every opening runs.
"""

from .checks import Layout, Problem, ProblemKind, check_structure, read_manifest, structural_problems
from .format import (
    FIELDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    MARKER,
    MAX_Z,
    PER_ATOM,
    PER_GRID,
    PER_MOLECULE,
    REQUIRED,
    FieldSpec,
    array_checksum,
    sha256_file,
)
from .reader import PackedDataset
from .writer import PackedWriter

__all__ = [
    "FIELDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "MARKER",
    "MAX_Z",
    "PER_ATOM",
    "PER_GRID",
    "PER_MOLECULE",
    "REQUIRED",
    "FieldSpec",
    "Layout",
    "PackedDataset",
    "PackedWriter",
    "Problem",
    "ProblemKind",
    "array_checksum",
    "check_structure",
    "read_manifest",
    "sha256_file",
    "structural_problems",
]
