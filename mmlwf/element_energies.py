"""Per-element reference energies: what a model's energies are relative to, and where they come from.

A model predicts the energy relative to the sum of its molecule's element energies; these are
added back in float64 (training targets, predictions, the calculator). ``model.json`` and
``stats.json`` store them as ``element_energies_by_Z`` (eV, keys are atomic numbers as
strings) with their origin, ``element_energies_source`` (:func:`source_record`).

The user chooses them (a dataset's ``stats.element_energies``, ``mmlwf stats
--element-energies``), one of :data:`CHOICES`:

- a file of isolated-atom structures (any format ``mmlwf convert`` reads, one atom per
  structure, one structure per element; "E0s" in other MLIP codes): the references are the
  isolated atoms at the reference's level of theory, so a model's per-atom energies are
  atomisation-referenced contributions and total energies transfer between compositions;
- numbers per element symbol (eV), ``{H: -13.57, C: -1025.3, ...}``: the same, typed in;
- ``fit``: ridge least squares of the training energies on the element counts
  (:func:`fit_element_energies`), refused when the compositions do not determine them (a
  single composition determines only the sum over it: :func:`fit_rank`);
- ``auto`` (the default): ``fit``, but where the compositions do not determine the
  references it takes the fit's minimum-norm split with a warning (single-composition data
  such as rMD17 train as before; their per-atom energies carry no meaning).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .constants import MAX_Z, Z_RANGE, Z_TABLE_SIZE
from .errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:  # numpy is imported on use: the settings (and so the CLI's parsers) import this module
    import numpy as np

FIT = "fit"
AUTO = "auto"
#: the keywords of the choice (anything else given as text is a file)
KEYWORDS = (AUTO, FIT)
#: the default choice (the one home of it: settings, CLI, :func:`mmlwf.stats.compute_stats`)
DEFAULT = AUTO
#: what the choice may be, for help texts
CHOICES = "a file of isolated-atom structures, numbers per element symbol (eV), fit or auto"
#: the ridge of the fit (relative to the number of structures)
DEFAULT_RIDGE = 1e-8
#: the kinds of ``element_energies_source`` (``mixture``: the agreeing references of a
#: mixture's members, :func:`merge_references`)
KINDS = ("isolated_atoms", "config", "fit", "mixture")


def reference_table(element_energies: Mapping | None) -> np.ndarray:
    """``(Z_TABLE_SIZE,)`` float64 energies (eV) by atomic number (``{"8": -432.1, ...}`` or
    ``{8: ...}``); elements without a reference are NaN. An atomic number outside 1-118 is a
    one-line :class:`~mmlwf.errors.DataError`."""
    import numpy as np

    table = np.full(Z_TABLE_SIZE, np.nan, np.float64)
    for z, e in dict(element_energies or {}).items():
        zi = int(z)
        if not 1 <= zi <= MAX_Z:
            raise DataError(f"element energies: atomic number {z} is outside {Z_RANGE}", field="element_energies")
        table[zi] = float(e)
    return table


def check_choice(value, key: str = "element_energies") -> str | dict[str, float]:
    """``value`` checked before it becomes a path or a table: a keyword, a file name with a
    suffix (a bare word is a misspelt keyword, not a file), or a mapping of element symbols
    to finite numbers (eV). One-line :class:`~mmlwf.errors.ConfigError` naming ``key``."""
    if isinstance(value, Mapping):
        symbols_to_z(value, key)
        return {str(k): float(v) for k, v in value.items()}
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected {CHOICES}, got {value!r}")
    if value in KEYWORDS:
        return value
    if not Path(value).suffix or Path(value).name in (".", ".."):
        raise ConfigError(f"{key}: {value!r} is neither {' nor '.join(KEYWORDS)} nor a file name with an extension"
                          f"{did_you_mean(value, KEYWORDS)}")
    return value


def symbols_to_z(mapping: Mapping, key: str = "element_energies") -> dict[int, float]:
    """``{"H": -13.57, ...}`` -> ``{1: -13.57, ...}``; an unknown symbol or a value that is not
    a finite number is a one-line ConfigError naming ``key``."""
    from ase.data import atomic_numbers, chemical_symbols

    out: dict[int, float] = {}
    for symbol, energy in mapping.items():
        z = atomic_numbers.get(str(symbol))
        if z is None or not 1 <= z <= MAX_Z:
            raise ConfigError(f"{key}: {symbol!r} is not an element symbol"
                              f"{did_you_mean(str(symbol), chemical_symbols[1:MAX_Z + 1])}")
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy):
            raise ConfigError(f"{key}.{symbol}: expected a finite energy in eV, got {energy!r}")
        out[z] = float(energy)
    return out


def covering(table: Mapping[int, float], elements, where: str, field: str | None = None) -> dict[int, float]:
    """The entries of ``table`` for ``elements`` (atomic numbers); a one-line DataError naming
    ``where`` and the first element without a reference."""
    from ase.data import chemical_symbols

    missing = [int(z) for z in elements if int(z) not in table]
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise DataError(f"no reference energy for {names}, which the training data contain "
                        f"(give one isolated atom of each element)", path=where, field=field)
    return {int(z): float(table[int(z)]) for z in elements}


def fit_element_energies(counts: np.ndarray, energies: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Per-element energies ``e`` minimising ``|counts @ e - E|^2 + ridge * n * |e|^2``.

    ``counts (n, k)`` atoms of each element per structure, ``energies (n,)`` eV. The small
    ridge keeps the fit defined when compositions are collinear (a single molecule type: then
    only the sum over its composition is determined, and the ridge picks the minimum-norm
    split; :func:`fit_rank` tells).
    """
    import numpy as np

    n = counts.shape[0]
    A = counts.T @ counts + ridge * max(n, 1) * np.eye(counts.shape[1])
    return np.linalg.solve(A, counts.T @ energies)


def fit_rank(counts: np.ndarray) -> int:
    """The rank of the element-count matrix ``(n, k)``: the fit determines the ``k`` element
    energies only when it is ``k`` (computed on the distinct compositions)."""
    import numpy as np

    if counts.size == 0:
        return 0
    return int(np.linalg.matrix_rank(np.unique(counts, axis=0)))


def undetermined_message(rank: int, elements) -> str:
    """Why a fit cannot give per-element energies, and what to do instead."""
    from ase.data import chemical_symbols

    names = ", ".join(chemical_symbols[int(z)] for z in elements)
    return (f"the training compositions determine only {rank} combination(s) of the {len(elements)} element "
            f"energies ({names}): a fit would split the energy in proportion to the counts, meaningless per atom; "
            f"give isolated-atom energies (a file of single atoms, or numbers per element in eV)")


def source_record(kind: str, **facts) -> dict:
    """``element_energies_source`` of ``stats.json`` / ``model.json``: ``kind`` (one of
    :data:`KINDS`) and its facts (``file`` and ``sha256`` of an isolated-atom file; ``rank``,
    ``n_elements``, ``determined`` and ``ridge`` of a fit)."""
    if kind not in KINDS:
        raise ValueError(f"element energies source kind {kind!r} is not one of {KINDS}")
    return {"kind": kind, **facts}


def merge_references(members: list[tuple[str, Mapping, Mapping | None]]) -> tuple[dict[str, float], dict] | None:
    """One set of references for a mixture from its members' ``(name, element_energies_by_Z,
    element_energies_source)``: the union of the members' isolated-atom/config references
    when every member has them (they must agree: one level of theory), None when every member
    was fitted (the caller then fits on the union). ConfigError when members disagree.
    """
    kinds = {name: (source or {}).get("kind", "fit") for name, _, source in members}
    if all(k == "fit" for k in kinds.values()):
        return None
    if any(k == "fit" for k in kinds.values()):
        fitted = sorted(n for n, k in kinds.items() if k == "fit")
        raise ConfigError(f"mixture: {', '.join(fitted)} fitted their element energies while the other members "
                          "give isolated-atom references; give every member the same references")
    merged: dict[str, float] = {}
    for name, by_z, _ in members:
        for z, e in by_z.items():
            z = str(int(z))
            if z in merged and not math.isclose(merged[z], float(e), rel_tol=0, abs_tol=1e-6):
                raise ConfigError(f"mixture: {name} gives element {z} the reference energy {float(e)} eV, another "
                                  f"member {merged[z]} eV; a mixture needs one level of theory")
            merged[z] = float(e)
    return merged, source_record("mixture", members={name: source for name, _, source in members})
