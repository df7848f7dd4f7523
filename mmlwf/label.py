"""Reference labels with pyscf: SCF energy, dipole, optional charges/forces, and the ESP.

Public API::

    label_structures(sources, output, *, method, basis, fmt=None, points=PointSettings(),
                     cache_dir=None, max_structures=None, stride=1, charge=None, spin=None,
                     charges, forces, keys=None, length_unit=None, threads=None,
                     overwrite=False, progress=False) -> Path

(``method``, ``basis``, ``charges``, ``forces``: defaults from :class:`LabelSettings`)

reads geometries from ``sources`` (any format ``mmlwf convert`` reads; every ``stride``-th
structure, at most ``max_structures`` of them), runs one SCF per
structure (``method``: ``"HF"`` or any pyscf DFT functional name, e.g. ``"B3LYP"``; restricted
for closed shells, unrestricted otherwise), and writes a packed dataset at ``output`` with,
in canonical units: ``E`` SCF energy (eV), ``D`` dipole (e·Å; pyscf's ``dip_moment`` is about
the origin, stored about the centroid of the atoms as every packed dataset's, :mod:`mmlwf.dipoles`), ``grid`` (Å) and ``esp`` (V) on points chosen by
:mod:`mmlwf.esp.points` (default: the 1.4-2.0 vdW shell on a 0.5 Å cubic grid; in
``density`` mode the SCF density's 1e-4..1e-3 e/Bohr^3 window), optionally ``q``
(``charges="mulliken"``, e) and ``F`` (``forces=True``, eV/Å). The total charge is
``charge`` if given, else the structure's ``Qtot``; ``spin`` (2S) defaults to the lowest
allowed (0 or 1). The manifest records ``includes_dispersion: false`` (HF and pyscf's DFT here
have no dispersion correction) and ``dipole_reference: centroid``.

With ``cache_dir``, every structure's result is kept in ``cache_dir/<key>.npz`` (written
atomically), ``key`` a SHA-256 of Z, R, charge, spin, method, basis, point settings and
the optional outputs: an interrupted run resumes without recomputing what is done.
``threads``: pyscf's OpenMP threads during the run (None: pyscf's default, i.e.
``OMP_NUM_THREADS`` or all cores); for molecules as small as water one thread is fastest
(HF/6-31g* water with ~600 ESP points: about 0.09 s of CPU per structure on one thread).
The ESP is evaluated vectorised (``df.incore.aux_e2`` with point charges, as pyscf's
``cubegen.mep``), in chunks of points.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from ase import units as U

from . import __version__
from .dipoles import STORED_DIPOLE_REFERENCE, dipoles_about_centroid
from .errors import ConfigError, DataError
from .esp.points import PointSettings, generate, radii
from .fileio import save_npz_deterministic
from .packed import PackedWriter, sha256_file
from .settings.data import LabelSettings as _LabelSection
from .structure import Structure

CHARGE_METHODS = (None, "mulliken")
_CHUNK_BYTES = 64 << 20  # memory of one chunk of ESP integrals


@dataclass(frozen=True)
class LabelSettings:
    """Level of theory and what to compute (see the module docstring): the one home of these
    defaults (``label_structures``, ``mmlwf label`` and the workflow's labels use them)."""

    method: str = _LabelSection.model_fields["method"].default  # declared with the workflow's labels
    basis: str = _LabelSection.model_fields["basis"].default
    charges: str | None = _LabelSection.model_fields["charges"].default
    forces: bool = False
    conv_tol: float = 1e-9

    def __post_init__(self) -> None:
        if self.charges not in CHARGE_METHODS:
            raise ConfigError(f"charges '{self.charges}' unknown (known: mulliken, or none)")
        if not str(self.method).strip():
            raise ConfigError("empty method: give HF or a DFT functional name")


def esp_at(mol, dm: np.ndarray, points_bohr: np.ndarray) -> np.ndarray:
    """Electrostatic potential (Hartree/e) of nuclei and electrons at ``points_bohr`` (G, 3).

    ``dm``: the total AO density matrix (the sum of both spins for open shells).
    """
    from pyscf import df, gto

    pts = np.asarray(points_bohr, dtype=np.float64).reshape(-1, 3)
    d = pts[:, None, :] - mol.atom_coords()[None, :, :]
    v_nuc = (mol.atom_charges()[None, :] / np.linalg.norm(d, axis=-1)).sum(axis=1)
    v_el = np.empty(pts.shape[0])
    step = max(1, _CHUNK_BYTES // (8 * mol.nao_nr() ** 2))
    for a in range(0, pts.shape[0], step):
        fake = gto.fakemol_for_charges(pts[a : a + step])
        ints = df.incore.aux_e2(mol, fake)  # (nao, nao, g): (mu nu | 1/|r - p|)
        v_el[a : a + step] = np.einsum("ijp,ij->p", ints, dm)
    return v_nuc - v_el


def build_molecule(Z: np.ndarray, R_ang: np.ndarray, basis: str, charge: int, spin: int | None):
    """A pyscf ``Mole`` (Å input); ``spin`` None: 0 for an even electron count, else 1."""
    from pyscf import gto

    n_el = int(np.sum(Z)) - charge
    if spin is None:
        spin = n_el % 2
    if (n_el - spin) % 2 or spin < 0 or n_el < 0:
        raise ConfigError(f"{n_el} electrons cannot have spin (2S) {spin}")
    try:
        return gto.M(atom=[(int(z), tuple(r)) for z, r in zip(Z, R_ang)], unit="Angstrom", basis=basis,
                     charge=charge, spin=spin, verbose=0)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"pyscf cannot build the molecule with basis '{basis}' ({type(exc).__name__}: {_one_line(exc)})")


def _run_scf(mol, settings: LabelSettings):
    """Converged SCF object, or None when it did not converge (also after a second-order try)."""
    from pyscf import dft, scf

    restricted = mol.spin == 0
    if settings.method.upper() in ("HF", "RHF", "UHF"):
        mf = scf.RHF(mol) if restricted else scf.UHF(mol)
    else:
        mf = dft.RKS(mol) if restricted else dft.UKS(mol)
        mf.xc = settings.method
    mf.conv_tol = settings.conv_tol
    mf.verbose = 0
    try:
        mf.kernel()
    except (KeyError, ValueError) as exc:  # e.g. an unknown functional name
        raise ConfigError(f"pyscf cannot run method '{settings.method}' ({type(exc).__name__}: {_one_line(exc)})")
    if not mf.converged:
        mf = mf.newton()
        mf.kernel()
    return mf if mf.converged else None


def label_one(
    Z: np.ndarray,
    R_ang: np.ndarray,
    charge: int,
    spin: int | None,
    settings: LabelSettings,
    points: PointSettings,
    index: int = 0,
) -> dict[str, np.ndarray] | None:
    """Labels of one molecule in canonical units, or None when the SCF does not converge."""
    from pyscf.dft import numint

    radii(Z)  # every element needs a vdW radius: fail before the SCF
    mol = build_molecule(Z, R_ang, settings.basis, charge, spin)
    mf = _run_scf(mol, settings)
    if mf is None:
        return None
    dm = mf.make_rdm1()
    dm_total = dm[0] + dm[1] if dm.ndim == 3 else dm

    def density(points_ang: np.ndarray) -> np.ndarray:  # e/Bohr^3
        ao = numint.eval_ao(mol, points_ang / U.Bohr)
        return numint.eval_rho(mol, ao, dm_total)

    grid = generate(Z, R_ang, points, index=index, density_fn=density)
    out = {
        "E": np.float64(mf.e_tot * U.Hartree),
        "D": np.asarray(mf.dip_moment(unit="AU", verbose=0), dtype=np.float64) * U.Bohr,
        "grid": grid,
        "esp": esp_at(mol, dm_total, grid / U.Bohr) * U.Hartree,
    }
    if settings.charges == "mulliken":
        out["q"] = np.asarray(mf.mulliken_pop(verbose=0)[1], dtype=np.float64)
    if settings.forces:
        grad = mf.nuc_grad_method()
        grad.verbose = 0
        out["F"] = -np.asarray(grad.kernel()) * (U.Hartree / U.Bohr)
    return out


def cache_key(Z, R_ang, charge: int, spin, settings: LabelSettings, points: PointSettings) -> str:
    """SHA-256 naming a structure's cached labels (positions rounded to 1e-8 Å)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(Z, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(np.round(np.asarray(R_ang, np.float64), 8) + 0.0).tobytes())
    meta = {"charge": charge, "spin": spin, "label": asdict(settings), "points": points.as_dict()}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _load_cached(path: Path, wanted: Sequence[str]) -> dict | None:
    """A cache entry's arrays, or None when it is damaged or lacks a wanted field (recompute)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {k: npz[k] for k in npz.files}
    except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
        return None
    return labels if all(k in labels for k in wanted) else None


def _geometries(sources, fmt, keys, length_unit, max_structures, stride=1) -> Iterator[tuple[str, Structure]]:
    from .io import open_source, parse_key_map

    key_map = parse_key_map(keys)
    opened = [open_source(p, fmt, key_map) for p in sources]  # fail fast on bad paths/formats
    n = seen = 0
    for src in opened:
        units = src.units.replace(length=length_unit)
        where = str(src.path)
        for s in src:
            seen += 1
            if (seen - 1) % stride:
                continue
            if max_structures is not None and n >= max_structures:
                return
            yield where, s.checked(where, require_energy=False).to_canonical(units)
            n += 1


def label_structures(
    sources: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    method: str = LabelSettings.method,
    basis: str = LabelSettings.basis,
    fmt: str | None = None,
    points: PointSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_structures: int | None = None,
    stride: int = _LabelSection.model_fields["stride"].default,
    charge: int | None = None,
    spin: int | None = None,
    charges: str | None = LabelSettings.charges,
    forces: bool = LabelSettings.forces,
    keys: Mapping[str, str] | Sequence[str] | None = None,
    length_unit: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Label the geometries of ``sources`` with pyscf into the packed dataset ``output``.

    See the module docstring; the level of theory's defaults are those of
    :class:`LabelSettings`. Raises DataError (file, structure index) when an SCF does not
    converge, ConfigError on a bad method/basis/setting; ``output`` is written atomically.
    """
    if not sources:
        raise DataError("no source files given")
    settings = LabelSettings(method=method, basis=basis, charges=charges, forces=bool(forces))
    points = points or PointSettings()
    if max_structures is not None and max_structures < 1:
        raise ConfigError(f"max_structures must be >= 1, got {max_structures}")
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    cache = None if cache_dir is None else Path(cache_dir)
    wanted = ("E", "D", "grid", "esp") + (("q",) if charges else ()) + (("F",) if forces else ())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" structures", total=max_structures, mininterval=1.0, dynamic_ncols=True)
    stats = {"computed": 0, "cached": 0}
    previous_threads = _set_threads(threads)
    try:
        with PackedWriter(output, overwrite=overwrite) as writer:
            for k, (where, s) in enumerate(_geometries(sources, fmt, keys, length_unit, max_structures, int(stride))):
                q = s.Qtot if charge is None else charge
                if abs(q - round(q)) > 1e-6:
                    raise DataError(f"total charge {q} is not an integer", path=where, field="Qtot", index=s.index)
                q = round(q)
                key = cache_key(s.Z, s.R, q, spin, settings, points)
                labels = None
                entry = None if cache is None else cache / f"{key}.npz"
                if entry is not None and entry.exists():
                    labels = _load_cached(entry, wanted)
                if labels is not None:
                    stats["cached"] += 1
                else:
                    # subsampling seeded by the geometry, not its position: cache entries are reusable
                    try:
                        labels = label_one(s.Z, s.R, q, spin, settings, points, index=int(key[:8], 16))
                    except DataError as exc:
                        raise exc.at(path=where, index=s.index)
                    if labels is None:
                        raise DataError(f"{settings.method}/{settings.basis} SCF did not converge",
                                        path=where, field="E", index=s.index)
                    stats["computed"] += 1
                    if entry is not None:
                        save_npz_deterministic(entry, labels)
                writer.add(_structure(s, q, labels, k, where), where=where)
                if bar is not None:
                    bar.update(1)
            writer.close(
                includes_dispersion=False,
                dipole_reference=STORED_DIPOLE_REFERENCE,
                sources=[{"path": str(p), "name": Path(p).name, "sha256": sha256_file(p)} for p in sources],
                labeller={"mmlwf_version": __version__, "pyscf_version": _pyscf_version(),
                          **asdict(settings), "charge": charge, "spin": spin, "points": points.as_dict(),
                          **stats},
            )
    finally:
        _set_threads(previous_threads)
        if bar is not None:
            bar.close()
    return Path(output)


def _set_threads(n: int | None) -> int | None:
    """Set pyscf's OpenMP thread count (None: leave it); return the previous count."""
    if n is None:
        return None
    from pyscf import lib

    previous = lib.num_threads()
    lib.num_threads(n)
    return previous


def _structure(s: Structure, charge: int, labels: Mapping[str, np.ndarray], index: int, where: str) -> Structure:
    if labels["grid"].shape[0] == 0:
        raise DataError("no ESP point selected (point settings too strict?)", path=where, field="grid", index=s.index)
    # the cache keeps pyscf's dipole about the origin; the dataset stores it about the centroid
    D = dipoles_about_centroid(np.asarray(labels["D"])[None], np.array([float(charge)]), s.Z, s.R,
                               np.array([len(s.Z)]), "origin")[0]
    return Structure(
        Z=s.Z, R=s.R, E=float(labels["E"]), Qtot=float(charge), D=D,
        q=labels.get("q"), F=labels.get("F"), grid=labels["grid"], esp=labels["esp"], index=index,
    ).checked(where)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _pyscf_version() -> str:
    import pyscf

    return pyscf.__version__
