"""Physical constants and element tables (canonical units: Å, eV, e), one home each.

Unit conversion factors live in :mod:`mmlwf.units` (from :mod:`ase.units`); this module holds
the constants the models and analyses compute with. Imports nothing.
"""

from __future__ import annotations

#: Coulomb constant ``1 / (4 π ε0)`` in eV Å / e² (the potential of 1 e at 1 Å, in V), from the
#: CODATA values of :mod:`ase.units`
COULOMB_CONSTANT = 14.399645351950548
#: Bohr radius in Å, the ZBL screening length of PhysNet (CODATA 2014; :mod:`mmlwf.units`
#: converts bohr with ``ase.units.Bohr``, which differs from it in the 10th digit)
BOHR = 0.52917721067

#: the largest atomic number (oganesson); valid atomic numbers are ``1..MAX_Z``
MAX_Z = 118
#: length of tables indexed by atomic number (row 0 unused: padding atoms have ``Z = 0``)
Z_TABLE_SIZE = MAX_Z + 1
#: atomic numbers as written in messages ("outside 1-118")
Z_RANGE = f"1-{MAX_Z}"

