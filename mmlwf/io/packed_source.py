"""A packed dataset directory as a converter source (format ``packed``).

Lets packed datasets be concatenated or re-converted, and lets a dataset made by
``mmlwf label`` (which writes a packed dataset) flow through the same convert -> validate ->
split chain as any other source. Values are stored in canonical units (Å, eV, e, e·Å, V), so
the source's units are the canonical ones.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..dipoles import STORED_DIPOLE_REFERENCE
from ..packed import PackedDataset
from ..structure import Structure
from ..units import SourceUnits
from . import Source

CANONICAL_UNITS = SourceUnits(energy="eV", length="Angstrom", dipole="e*Angstrom", esp="V")


class PackedSource(Source):
    """Every structure of a packed dataset directory, with all its optional fields."""

    format = "packed"

    def __init__(self, path, keys=None) -> None:
        super().__init__(path, keys)
        if not self.path.is_dir():
            raise self.fail("a packed dataset is a directory (made by mmlwf convert or mmlwf label)")
        self.ds = PackedDataset(self.path)
        self.requires_energy = "E" in self.ds.fields
        # a packed dataset's dipoles are what the models compare with, about the centroid
        # (datasets written before the point was recorded included): re-conversion keeps them
        manifest = self.ds.manifest or {}
        self.recorded = {"dipole_reference": manifest.get("dipole_reference", STORED_DIPOLE_REFERENCE),
                         **{k: manifest[k] for k in ("includes_dispersion",) if k in manifest}}

    @property
    def units(self) -> SourceUnits:
        return CANONICAL_UNITS

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self.ds)):
            row = self.ds[i]
            yield Structure(
                Z=row["Z"], R=row["R"].astype(np.float64),
                E=float(row["E"]) if "E" in row else None,
                Qtot=float(row["Qtot"]) if "Qtot" in row else 0.0,
                F=row.get("F"), D=row.get("D"), q=row.get("q"), grid=row.get("grid"), esp=row.get("esp"),
                index=i,
            )
