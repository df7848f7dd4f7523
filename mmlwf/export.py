"""One portable file per trained model: ``mmlwf export RUN -o model.mmlwf``.

The file is an uncompressed NumPy ``.npz`` (a zip; read with ``allow_pickle=False``):

- ``__meta__``: UTF-8 JSON as ``uint8`` — ``format`` (``"mmlwf-export"``), ``format_version``,
  ``model_info`` (the run's ``model.json``: model config, units, element energies),
  ``source`` (run directory, checkpoint, EMA or not), ``paths`` (the flax variable tree path
  of each parameter array, ``"/"``-joined) and ``sha256`` of the content (see
  :func:`content_sha256`), checked on every load.
- ``p00000``, ``p00001``, ...: the parameter arrays in the order of ``paths``.

A full ensemble (``model_info`` has ``ensemble``, :mod:`mmlwf.ensemble`) is written as
``format_version`` 2: the same layout, every parameter array with its leading member axis
``(M, ...)`` and ``ensemble`` (size, kind, member seeds, spread scale) in the meta as well. A
single model is still written as version 1, byte for byte as before; both are read. A shallow
ensemble has one parameter set (no member axis): version 1 with ``ensemble`` in the meta and
``output_heads`` in the model config.

Loading (:func:`load_exported`) needs numpy, jax, flax and e3x only — not orbax or optax, so
a model can be used (ASE calculator, MD) without the training dependencies. The same run
exported twice gives a byte-identical file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .ensemble import ensemble_info, parameter_members
from .errors import ConfigError, DataError
from .inference import reference_table

FORMAT = "mmlwf-export"
FORMAT_VERSION = 1
#: the version of an ensemble's file (stacked parameter arrays); single models stay at 1
ENSEMBLE_FORMAT_VERSION = 2
#: every version this mmlwf reads
READ_VERSIONS = (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION)
_META = "__meta__"


def content_sha256(model_info: dict, paths: list[str], arrays: list[np.ndarray]) -> str:
    """SHA-256 of the model info (canonical JSON) and every array's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(model_info, sort_keys=True, separators=(",", ":")).encode())
    for path, arr in zip(paths, arrays):
        arr = np.ascontiguousarray(arr)
        h.update(f"\n{path}|{arr.dtype.str}|{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _flatten(variables) -> tuple[list[str], list[np.ndarray]]:
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(_as_dict(variables), sep="/")
    paths = sorted(flat)
    return paths, [np.asarray(flat[p]) for p in paths]


def _as_dict(tree):
    """Plain nested dicts (orbax may hand back other mappings)."""
    if hasattr(tree, "items"):
        return {str(k): _as_dict(v) for k, v in tree.items()}
    return tree


def export_model(run_dir: str | os.PathLike, output: str | os.PathLike, which: str = "best") -> dict:
    """Write the ``which`` (``best``/``latest``) parameters of ``run_dir`` to ``output``
    atomically; return the metadata written (with ``sha256``)."""
    from .fileio import save_npz_deterministic
    from .rundir import RunDir

    if which not in ("best", "latest"):
        raise ConfigError(f"--which must be 'best' or 'latest', got {which!r}")
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no model.json)")
    if not rd.kind.exportable:
        raise ConfigError(f"{run_dir}: model type {rd.model_type!r} cannot be exported yet "
                          f"(only {_exportable_kinds()})")
    run = rd.load(which)
    variables = run.params if "params" in run.params else {"params": run.params}
    paths, arrays = _flatten(variables)
    info = json.loads(json.dumps(run.info))  # JSON-clean copy
    ensemble = ensemble_info(info)
    stacked = parameter_members(info)  # 1 for a shallow ensemble: one parameter set
    if stacked > 1:
        _check_members(arrays, paths, stacked, run_dir)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if stacked == 1 else ENSEMBLE_FORMAT_VERSION,
        "model_info": info,
        "source": {"run_dir": str(run_dir.resolve()), "checkpoint": which, "ema": bool(info.get("ema", False))},
        "paths": paths,
        "sha256": content_sha256(info, paths, arrays),
    }
    if ensemble is not None:
        meta["ensemble"] = ensemble
    members = {f"p{k:05d}": a for k, a in enumerate(arrays)}
    members[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    save_npz_deterministic(output, members)
    return meta


def read_exported(path: str | os.PathLike) -> tuple[dict, Any]:
    """``(meta, variables)`` of an exported file, checked (format, version, sha256)."""
    from flax.traverse_util import unflatten_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"not an {FORMAT} file (not an npz/zip archive, or truncated)", path=path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _META not in npz.files:
                raise DataError(f"not an {FORMAT} file (no {_META} member)", path=path, field=_META)
            meta = json.loads(bytes(npz[_META]).decode())
            if meta.get("format") != FORMAT:
                raise DataError(f"format is {meta.get('format')!r}, expected {FORMAT!r}", path=path, field="format")
            if meta.get("format_version") not in READ_VERSIONS:
                raise DataError(f"format_version {meta.get('format_version')} is not supported "
                                f"(this mmlwf reads {', '.join(map(str, READ_VERSIONS))})", path=path,
                                field="format_version")
            paths = list(meta["paths"])
            arrays = [npz[f"p{k:05d}"] for k in range(len(paths))]
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"unreadable or truncated export file ({type(exc).__name__}: {exc})", path=path) from None
    digest = content_sha256(meta["model_info"], paths, arrays)
    if digest != meta.get("sha256"):
        raise DataError("content does not match its sha256 (corrupted or edited file)", path=path, field="sha256")
    size = parameter_members(meta["model_info"])
    if (size > 1) != (meta["format_version"] == ENSEMBLE_FORMAT_VERSION):
        raise DataError(f"format_version {meta['format_version']} does not match a model of {size} member(s)",
                        path=path, field="format_version")
    if size > 1:
        _check_members(arrays, paths, size, path)
    variables = unflatten_dict({tuple(p.split("/")): a for p, a in zip(paths, arrays)})
    return meta, variables


def _check_members(arrays: list[np.ndarray], paths: list[str], size: int, where) -> None:
    """Every array of an ensemble of ``size`` members has the leading member axis."""
    for path, arr in zip(paths, arrays):
        if arr.ndim == 0 or arr.shape[0] != size:
            raise DataError(f"parameter {path} has shape {arr.shape}, an ensemble of {size} members needs "
                            f"({size}, ...)", path=where, field="ensemble.size")


def _exportable_kinds() -> str:
    from .models.registry import kinds

    return ", ".join(k.name for k in kinds().values() if k.exportable)


def load_exported(path: str | os.PathLike):
    """The model of an exported file as a :class:`~mmlwf.inference.TrainedModel`
    (``run_dir`` is the file's path). Does not import orbax or optax."""
    from .inference import TrainedModel
    from .models.registry import kind_of_config

    meta, variables = read_exported(path)
    info = meta["model_info"]
    kind = kind_of_config(info.get("model"))
    if not kind.exportable:
        raise ConfigError(f"{path}: model type {kind.name!r} is not supported here (only {_exportable_kinds()})")
    model = kind.build_model(kind.stored_config(info["model"]))
    return TrainedModel(model, variables, info, reference_table(info["element_energies_by_Z"]), Path(path))
