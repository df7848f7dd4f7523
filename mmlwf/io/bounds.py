"""Declared array sizes against what the file really stores (HDF5 datasets, NPZ members).

An HDF5 dataset declares its shape in a few header bytes; the data behind it may never have
been written (reads then return the fill value). A 2-kB file can so declare 2·10⁹ atoms or
10¹² conformations: read as declared, one would allocate tens of GiB, the other convert
terabytes of zeros. :func:`check_stored` refuses a dataset whose declared size its stored
bytes cannot hold, before anything is read from it; :func:`check_npz_member` does the same
for the ``.npy`` header of an NPZ member against the member's size in the archive.
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
    nominal = int(ds.size) * ds.dtype.itemsize
    if nominal == 0 or ds.is_virtual or ds.external:
        return
    shape = tuple(int(n) for n in ds.shape)
    if ds.chunks is not None:
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


def check_npz_member(archive, name: str, source: "Source") -> None:
    """Raise the source's error when the ``.npy`` header of member ``name`` of the open
    ``zipfile.ZipFile`` ``archive`` declares more bytes than the member holds."""
    import numpy as np
    from numpy.lib import format as npy

    member = name + ".npy"
    if member not in archive.namelist():
        return  # not an .npy member: numpy reads it as it is
    size = archive.getinfo(member).file_size
    with archive.open(member) as fh:
        version = npy.read_magic(fh)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read_header(fh, max_header_size=1 << 16)
        header = fh.tell()
    if dtype.hasobject:
        return  # refused when read (no unpickling)
    nominal = math.prod(shape) * np.dtype(dtype).itemsize
    if nominal > size - header:
        raise source.fail(f"declares shape {tuple(shape)} ({nominal} bytes) but the archive holds "
                          f"{size - header} bytes for it", field=name)
