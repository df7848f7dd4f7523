"""Declared HDF5 dataset sizes against what the file really stores.

An HDF5 dataset declares its shape in a few header bytes; the data behind it may never have
been written (reads then return the fill value). A 2-kB file can so declare 2·10⁹ atoms or
10¹² conformations: read as declared, one would allocate tens of GiB, the other convert
terabytes of zeros. :func:`check_stored` refuses a dataset whose declared size its stored
bytes cannot hold, before anything is read from it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Source

#: most bytes one stored byte decompresses to: deflate's limit (1032:1), the largest of
#: the filters h5py reads without plug-ins apart from scale-offset on constant data
MAX_EXPANSION = 1032


def check_stored(ds, source: "Source", file_size: int, field: str, index: int | None = None) -> None:
    """Raise the source's error when ``ds`` declares more data than the file stores: a
    contiguous dataset with fewer stored bytes than its shape needs, a chunked one with
    chunks never written, or any dataset larger than ``MAX_EXPANSION`` times the file.
    Datasets stored in other files (virtual, external) are not checked."""
    import h5py

    nominal = int(ds.size) * ds.dtype.itemsize
    if nominal == 0:
        return
    shape = tuple(int(n) for n in ds.shape)
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL or dcpl.get_external_count():
        return
    if layout == h5py.h5d.CHUNKED:
        needed = math.prod(-(-n // c) for n, c in zip(shape, ds.chunks))
        stored = ds.id.get_num_chunks()
        if stored < needed:
            raise source.fail(f"declares shape {shape} but stores {stored} of its {needed} chunks "
                              "(never written): the file cannot hold that data", field=field, index=index)
    else:
        stored = ds.id.get_storage_size()
        if stored < nominal:
            raise source.fail(f"declares shape {shape} ({nominal} bytes) but stores {stored} bytes "
                              "(never written): the file cannot hold that data", field=field, index=index)
    if nominal > MAX_EXPANSION * file_size:
        raise source.fail(f"declares shape {shape} ({nominal} bytes), more than a file of {file_size} bytes "
                          f"holds even compressed (at most {MAX_EXPANSION}:1)", field=field, index=index)
