"""Data is verified before it is used: checksums, the dataset digest and provenance.

- :func:`verify_dataset` (``mmlwf train``, ``mmlwf evaluate``) hashes a packed dataset's
  files and compares them with the manifest's SHA-256s; a mismatch, a field without a
  checksum, or a manifest lost from a dataset mmlwf wrote (its marker file
  :data:`~mmlwf.packed.MARKER` says so) is a :class:`~mmlwf.errors.DataError` naming the
  field. Datasets in the users' legacy layout (never had a manifest) pass with a warning.
- The files are hashed in parallel (one thread per file, largest first: ``hashlib`` releases
  the GIL) and each file's result is **recorded** in a small cache keyed on its device,
  inode, size, mtime *and ctime* (ctime cannot be set back: a byte flipped with the mtime
  put back still changes it), so an unchanged dataset is not hashed twice. A file changed
  within :data:`RACY_S` seconds of being hashed is not recorded (timestamps are coarse).
  Cache: ``$MMLWF_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmlwf``, else ``~/.cache/mmlwf``;
  best effort (an unwritable cache only means hashing again). ``mmlwf validate`` always
  hashes everything (and records).
- The **dataset digest** (:func:`content_digest`) is one SHA-256 over the per-field checksums:
  ``split.npz``, ``stats.json`` and ``model.json`` record it, and :func:`check_made_from`
  refuses a split or stats made from another version of the dataset.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import DataError
from .fileio import atomic_write
from .packed import FIELDS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, MARKER, REQUIRED, read_manifest, sha256_file

log = logging.getLogger(__name__)

RACY_S = 2.0  # a file whose ctime is this close to its hashing is not recorded
_CACHE_ENV = "MMLWF_CACHE_DIR"
_RECORDS = "verified"  # sub-folder of the cache with one record file per dataset directory


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_dataset`: the dataset digest, and whether checksums backed it
    (False for the legacy layout); ``hashed``: bytes actually read (0 when all recorded)."""

    path: Path
    digest: str
    verified: bool
    hashed: int = 0


# ----------------------------------------------------------------------------- digests


def content_digest(checksums: Mapping[str, str]) -> str:
    """The dataset digest: SHA-256 of the sorted ``field:sha256`` lines of its arrays."""
    text = "".join(f"{name}:{checksums[name]}\n" for name in sorted(checksums))
    return hashlib.sha256(text.encode()).hexdigest()


def write_marker(directory: str | os.PathLike, manifest: Mapping) -> None:
    """Write the marker of a dataset written by mmlwf (its digest too): it outlives the manifest."""
    sums = {name: entry["sha256"] for name, entry in manifest["fields"].items()}
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "digest": content_digest(sums)}
    with open(Path(directory) / MARKER, "w") as fh:
        json.dump(doc, fh)
        fh.write("\n")


def read_marker(root: Path) -> dict | None:
    """The marker of an mmlwf dataset, or None when there is none (legacy layout)."""
    path = root / MARKER
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable marker ({' '.join(str(exc).split())})", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise DataError(f"not an {FORMAT_NAME} marker", path=path, field="format")
    return doc


def _fields(root: Path, manifest: Mapping | None) -> list[str]:
    """Fields the dataset uses: those its manifest lists (and the required ones), else every
    known file present (legacy layout)."""
    if manifest is None:
        return [n for n, spec in FIELDS.items() if (root / spec.file).exists()]
    listed = [n for n in manifest["fields"] if n in FIELDS]
    return listed + [n for n in REQUIRED if n not in listed]


def expected_checksums(root: str | os.PathLike) -> tuple[dict[str, str] | None, list[DataError]]:
    """``(the manifest's checksums or None for the legacy layout, problems)``: a field without
    a checksum, a manifest that contradicts the marker. (A lost manifest of a dataset mmlwf
    wrote is one of :func:`~mmlwf.packed.structural_problems`.)"""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        return None, []
    marker, mpath = read_marker(root), root / MANIFEST
    sums, problems = {}, []
    for name in _fields(root, manifest):
        entry = manifest["fields"].get(name)
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or len(sha) != 64:
            problems.append(DataError("the manifest has no checksum for this field: the data cannot be verified "
                                      "(edited or damaged manifest; convert the dataset again)", path=mpath, field=name))
        else:
            sums[name] = sha
    if not problems and marker is not None and marker.get("digest") != content_digest(sums):
        problems.append(DataError(f"its checksums differ from those {MARKER} records (the manifest was replaced "
                                  "or edited)", path=mpath, field="sha256"))
    return sums, problems


# ----------------------------------------------------------------------------- hashing


def _data_offset(path: Path) -> int:
    """Where an array's data bytes start: after the header of a ``.npy`` file, else 0."""
    if path.suffix != ".npy":
        return 0
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            read(fh)
            return fh.tell()
    except ValueError as exc:
        raise DataError(f"unreadable .npy header ({exc})", path=path) from None


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cache_dir() -> Path:
    """Where verification records are kept (see the module docstring)."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmlwf"


def _record_path(root: Path) -> Path:
    key = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:32]
    return cache_dir() / _RECORDS / f"{key}.json"


def _load_records(root: Path) -> dict:
    try:
        doc = json.loads(_record_path(root).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("path") != str(root.resolve()) or not isinstance(doc.get("files"), dict):
        return {}
    return doc["files"]


def _save_records(root: Path, files: dict) -> None:
    try:
        with atomic_write(_record_path(root)) as fh:
            json.dump({"path": str(root.resolve()), "files": files}, fh)
    except OSError as exc:  # best effort: the next run hashes again
        log.debug("verification record not written: %s", exc)


def field_checksums(root: str | os.PathLike, names: list[str], *, use_records: bool = True) -> tuple[dict, int]:
    """``({field: SHA-256 of its data bytes}, bytes hashed)``: files recorded unchanged are
    not read again (``use_records=False`` hashes everything); new results are recorded."""
    root = Path(root)
    records = _load_records(root)
    out, todo = {}, []
    for name in names:
        path = root / FIELDS[name].file
        sig = _signature(path.stat())
        rec = records.get(FIELDS[name].file)
        if use_records and isinstance(rec, dict) and rec.get("signature") == sig and isinstance(rec.get("sha256"), str):
            out[name] = rec["sha256"]
        else:
            todo.append((sig[2], name, path, sig))
    if not todo:
        return out, 0
    todo.sort(reverse=True)
    start = time.time_ns()

    def one(item):
        _, name, path, sig = item
        offset = _data_offset(path)
        return name, path, sig, sha256_file(path, offset=offset)

    workers = max(1, min(len(todo), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="mmlwf-verify") as pool:
        results = list(pool.map(one, todo))
    racy = start - int(RACY_S * 1e9)
    changed = False
    for name, path, sig, sha in results:
        out[name] = sha
        if _signature(path.stat()) == sig and sig[4] < racy:
            records[path.name] = {"signature": sig, "sha256": sha}
            changed = True
    if changed:
        _save_records(root, records)
    return out, sum(item[0] for item in todo)


# ----------------------------------------------------------------------------- verification


def checksum_problems(root: str | os.PathLike, *, use_records: bool = True) -> tuple[list[DataError], str | None, int]:
    """``(every checksum problem, the dataset digest or None, bytes hashed)``."""
    root = Path(root)
    expected, problems = expected_checksums(root)
    if problems:
        return problems, None, 0
    names = list(expected) if expected is not None else _fields(root, None)
    actual, hashed = field_checksums(root, names, use_records=use_records)
    if expected is None:  # legacy layout: the digest of what is there
        return [], content_digest(actual), hashed
    for name in names:
        if actual[name] != expected[name]:
            problems.append(DataError("content differs from the manifest's SHA-256 (the file changed after it was "
                                      "written; convert the dataset again)", path=root / FIELDS[name].file, field=name))
    return problems, content_digest(expected), hashed


def verify_dataset(path: str | os.PathLike, *, use_records: bool = True) -> Verification:
    """Check a dataset's files against its manifest before it is used (see module docstring).

    Raises :class:`DataError` (one line naming the field) on the first problem.
    """
    from .packed import structural_problems

    root = Path(path)
    structural = structural_problems(root)
    if structural:
        raise structural[0]
    problems, digest, hashed = checksum_problems(root, use_records=use_records)
    if problems:
        first = problems[0]
        if len(problems) > 1:
            others = ", ".join(p.field or "?" for p in problems[1:])
            first = DataError(f"{first.message}; also: {others}", path=first.path, field=first.field)
        raise first
    verified = read_manifest(root) is not None
    if not verified:
        log.warning("%s: no %s (legacy layout): its content is not verified", root, MANIFEST)
    return Verification(root, digest, verified, hashed)


def verify_in_background(paths: list) -> concurrent.futures.Future:
    """Start :func:`verify_dataset` on each path in a thread (overlapping start-up work);
    the future's result is the list of :class:`Verification` (or raises the first DataError)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mmlwf-verify")
    future = pool.submit(lambda: [verify_dataset(p) for p in paths])
    pool.shutdown(wait=False)
    return future


def dataset_digest(path: str | os.PathLike) -> str:
    """The digest of a dataset: from its manifest's checksums (not re-hashed), or of its files
    for the legacy layout. Raises DataError when the manifest lost its checksums."""
    root = Path(path)
    expected, problems = expected_checksums(root)
    if problems:
        raise problems[0]
    if expected is not None:
        return content_digest(expected)
    return content_digest(field_checksums(root, _fields(root, None))[0])


# ----------------------------------------------------------------------------- provenance


def check_made_from(path: str | os.PathLike, recorded: str | None, digest: str, dataset: str | os.PathLike,
                    command: str) -> None:
    """Refuse a file (split, stats) whose recorded dataset digest is not ``digest``. Files
    written before digests were recorded (``recorded`` None) pass."""
    if recorded is not None and recorded != digest:
        raise DataError(f"made from another version of the dataset (digest {recorded[:12]}, {dataset} now has "
                        f"{digest[:12]}): run 'mmlwf {command}' again", path=path, field="dataset_digest")


def check_split(path: str | os.PathLike, digest: str, dataset: str | os.PathLike) -> None:
    """Refuse a split made from another version of ``dataset`` (an unreadable file passes:
    :func:`~mmlwf.split.load_split` reports it where the split is read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            recorded = str(z["dataset_digest"]) if "dataset_digest" in z.files else None
    except (OSError, ValueError, EOFError):
        recorded = None
    check_made_from(path, recorded, digest, dataset, "split")


def check_stats(path: str | os.PathLike, digest: str, dataset: str | os.PathLike) -> None:
    """Refuse statistics made from another version of ``dataset`` (unreadable: as above)."""
    from .stats import load_stats

    try:
        stats = load_stats(path)
    except (OSError, ValueError):
        return
    recorded = stats.get("dataset_digest") if isinstance(stats, dict) else None
    check_made_from(path, recorded, digest, dataset, "stats")


def check_provenance(data: list, split: list, stats: list | None, digests: list[str]) -> None:
    """Refuse a split or stats file made from another version of its dataset (lists of equal
    length: one dataset, split and stats file each; ``stats`` may be None)."""
    if len(split) != len(data):
        raise DataError(f"{len(data)} datasets but {len(split)} splits")
    for i, (d, digest) in enumerate(zip(data, digests)):
        check_split(split[i], digest, d)
        if stats is not None and i < len(stats):
            check_stats(stats[i], digest, d)
