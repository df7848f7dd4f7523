#!/usr/bin/env python
"""Benchmark of ``mmlwf convert`` on a large synthetic HDF5 input.

Writes a synthetic HDF5 file (ANI-style groups, or the flat padded layout) of at least
``--atoms`` atoms in bounded memory, runs ``mmlwf convert SRC -o OUT`` in a subprocess and
samples the child's ``/proc/<pid>/status`` every ~20 ms for the peak anonymous memory
(``RssAnon``: heap and stacks, mapped file pages excluded) and ``VmHWM`` (peak resident set,
file pages included, for reference). Prints a readable summary and, as the last line, one
JSON object. Exit status 0 when the peak ``RssAnon`` is under the limit (1024 MB), 1 when
it is not, 2 when the conversion itself failed.

    python benchmarks/convert.py                        # 20 M atoms, ANI-style groups
    python benchmarks/convert.py --layout flat          # R (n,60,3), Z (n,60), E, F, N
    python benchmarks/convert.py --smoke                # 200 k atoms, a few seconds (CI)
    python benchmarks/convert.py --atoms 50000000 --workdir /scratch --keep
    python benchmarks/convert.py --hartree --compression gzip   # scaled values, gzip-chunked input

The synthetic molecules have 5-60 atoms of H, C, N, O (a few F, S) on a jittered cubic
lattice (1.5 Å spacing, ±0.2 Å jitter per conformation: no two atoms closer than 1.1 Å),
energies in eV (or Hartree with ``--hartree``, so the converter has to scale energies and
forces) and forces of a few eV/Å.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 1024.0
SMOKE_ATOMS = 200_000
MIN_ATOMS, MAX_ATOMS, WIDTH = 5, 60, 60  # molecule sizes; padded width of the flat layout
ELEMENTS = np.array([1, 6, 7, 8, 9, 16])
ELEMENT_P = np.array([0.50, 0.30, 0.08, 0.10, 0.01, 0.01])
# rough atomic reference energies (eV) so that the energies look like total energies
E_REF = {1: -13.6, 6: -1029.5, 7: -1485.0, 8: -2041.3, 9: -2715.6, 16: -10830.0}
try:  # the converter's own constant (ASE), so that values round-trip exactly
    from ase.units import Hartree as HARTREE_EV
except ImportError:  # pragma: no cover
    HARTREE_EV = 27.211386024367243
SPACING, JITTER = 1.5, 0.2  # Å


# ----------------------------------------------------------------------------- input


def _molecule(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers (n,) and lattice sites (n,3) of one synthetic molecule."""
    side = int(np.ceil(n ** (1 / 3))) + 1
    sites = rng.choice(side**3, size=n, replace=False)
    base = np.stack(np.unravel_index(sites, (side, side, side)), axis=1).astype(np.float64) * SPACING
    base -= base.mean(axis=0)
    Z = rng.choice(ELEMENTS, size=n, p=ELEMENT_P)
    return Z, base


def _conformations(rng, base: np.ndarray, k: int) -> np.ndarray:
    """``k`` jittered copies of ``base`` (k, n, 3) float32."""
    jitter = rng.uniform(-JITTER, JITTER, size=(k, *base.shape))
    return (base[None] + jitter).astype(np.float32)


def _energies(rng, Z: np.ndarray, k: int) -> np.ndarray:
    ref = sum(E_REF[int(z)] for z in Z)
    return ref + rng.normal(0.0, 0.5 + 0.02 * Z.shape[0], size=k)


def _forces(rng, shape) -> np.ndarray:
    return rng.normal(0.0, 1.5, size=shape).astype(np.float32)


def write_ani(path: Path, atoms: int, seed: int, hartree: bool, compression=None, block: int = 8192) -> dict:
    """ANI-style file: ``/nNN/molMMMMMM/{species,coordinates,energies,forces}``, groups of
    16-1024 conformations, until at least ``atoms`` atoms. Memory: one block of conformations."""
    import h5py

    rng = np.random.default_rng(seed)
    total_atoms = molecules = groups = 0
    scale = 1.0 / HARTREE_EV if hartree else 1.0
    with h5py.File(path, "w") as h5:
        while total_atoms < atoms:
            n = int(rng.integers(MIN_ATOMS, MAX_ATOMS + 1))
            k = int(rng.integers(16, 1025))
            k = min(k, -(-(atoms - total_atoms) // n))  # stop near the target
            Z, base = _molecule(rng, n)
            g = h5.create_group(f"n{n:02d}/mol{groups:06d}")
            g.create_dataset("species", data=Z.astype(np.int64))
            R = g.create_dataset("coordinates", shape=(k, n, 3), dtype=np.float32, compression=compression)
            E = g.create_dataset("energies", shape=(k,), dtype=np.float64, compression=compression)
            F = g.create_dataset("forces", shape=(k, n, 3), dtype=np.float32, compression=compression)
            if hartree:
                E.attrs["units"] = "Hartree"
            for a in range(0, k, block):
                b = min(a + block, k)
                R[a:b] = _conformations(rng, base, b - a)
                E[a:b] = _energies(rng, Z, b - a) * scale
                F[a:b] = _forces(rng, (b - a, n, 3)) * np.float32(scale)
            total_atoms += n * k
            molecules += k
            groups += 1
    return {"atoms": total_atoms, "molecules": molecules, "groups": groups}


def write_flat(path: Path, atoms: int, seed: int, hartree: bool, compression=None, block: int = 8192) -> dict:
    """Flat padded file: ``R (n,60,3)``, ``Z (n,60)``, ``E (n,)``, ``F (n,60,3)``, ``N (n,)``."""
    import h5py

    rng = np.random.default_rng(seed)
    # molecule sizes first (1 byte each), so that the datasets have their final shapes
    sizes = []
    total = 0
    while total < atoms:
        s = rng.integers(MIN_ATOMS, MAX_ATOMS + 1, size=1 << 16).astype(np.int8)
        need = atoms - total
        csum = np.cumsum(s, dtype=np.int64)
        cut = int(np.searchsorted(csum, need)) + 1 if csum[-1] >= need else s.shape[0]
        sizes.append(s[:cut])
        total += int(csum[cut - 1])
    sizes = np.concatenate(sizes)
    n = sizes.shape[0]
    scale = 1.0 / HARTREE_EV if hartree else 1.0
    with h5py.File(path, "w") as h5:
        opts = {"compression": compression}
        dR = h5.create_dataset("R", shape=(n, WIDTH, 3), dtype=np.float32, **opts)
        dZ = h5.create_dataset("Z", shape=(n, WIDTH), dtype=np.int32, **opts)
        dE = h5.create_dataset("E", shape=(n,), dtype=np.float64, **opts)
        dF = h5.create_dataset("F", shape=(n, WIDTH, 3), dtype=np.float32, **opts)
        dN = h5.create_dataset("N", shape=(n,), dtype=np.int64, **opts)
        if hartree:
            dE.attrs["units"] = "Hartree"
        for a in range(0, n, block):
            b = min(a + block, n)
            m = b - a
            R = np.zeros((m, WIDTH, 3), np.float32)
            Z = np.zeros((m, WIDTH), np.int32)
            E = np.empty(m)
            F = np.zeros((m, WIDTH, 3), np.float32)
            for j, nj in enumerate(sizes[a:b].tolist()):
                z, base = _molecule(rng, nj)
                Z[j, :nj] = z
                R[j, :nj] = _conformations(rng, base, 1)[0]
                E[j] = _energies(rng, z, 1)[0] * scale
            real = np.arange(WIDTH)[None, :] < sizes[a:b, None]
            F[real] = _forces(rng, (int(real.sum()), 3)) * np.float32(scale)
            dR[a:b], dZ[a:b], dE[a:b], dF[a:b] = R, Z, E, F
            dN[a:b] = sizes[a:b]
    return {"atoms": total, "molecules": n, "groups": 0}


# ----------------------------------------------------------------------------- measuring


def _status(pid: int) -> dict[str, int]:
    """kB values of /proc/<pid>/status (empty once the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def run_convert(src: Path, out: Path, log: Path, interval: float = 0.02, extra=()) -> dict:
    """Run ``mmlwf convert`` and sample its memory until it exits."""
    cmd = [sys.executable, "-m", "mmlwf.cli", "convert", str(src), "-o", str(out), *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0, "VmRSS": 0}
    samples = 0
    with open(log, "wb") as logfh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logfh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        while True:
            st = _status(proc.pid)
            if st:
                samples += 1
                for key in peak:
                    peak[key] = max(peak[key], st.get(key, 0))
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(interval)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "cmd": cmd,
        "returncode": proc.returncode,
        "seconds": seconds,
        "samples": samples,
        "peak_rss_anon_mb": peak["RssAnon"] / 1024,
        "peak_rss_file_mb": peak["RssFile"] / 1024,
        # ru_maxrss (kB on Linux) is the kernel's own high-water mark, seen at exit
        "peak_vm_hwm_mb": max(peak["VmHWM"], rusage.ru_maxrss) / 1024,
        "cpu_seconds": rusage.ru_utime + rusage.ru_stime,
    }


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def spot_check(src: Path, out: Path, layout: str, expect: dict) -> None:
    """Counts and the first/last structure of the output against the source."""
    import h5py

    sys.path.insert(0, str(REPO))
    from mmlwf.packed import PackedDataset

    ds = PackedDataset(out)
    assert ds.n_molecules == expect["molecules"], (ds.n_molecules, expect)
    assert ds.n_atoms_total == expect["atoms"], (ds.n_atoms_total, expect)
    with h5py.File(src, "r") as h5:
        if layout == "flat":
            first = (h5["Z"][0], h5["R"][0], h5["F"][0], h5["N"][0], h5["E"][0])
            last = (h5["Z"][-1], h5["R"][-1], h5["F"][-1], h5["N"][-1], h5["E"][-1])
            picks = [(0, first), (-1, last)]
        else:
            names = []
            h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Group) and "species" in obj else None)
            g0, g1 = h5[names[0]], h5[names[-1]]
            picks = [
                (0, (g0["species"][()], g0["coordinates"][0], g0["forces"][0], g0["species"].shape[0], g0["energies"][0])),
                (-1, (g1["species"][()], g1["coordinates"][-1], g1["forces"][-1], g1["species"].shape[0], g1["energies"][-1])),
            ]
        e_unit = h5["E"].attrs.get("units") if layout == "flat" else h5[names[0]]["energies"].attrs.get("units")
    ef = HARTREE_EV if e_unit is not None else 1.0
    for i, (Z, R, F, n, E) in picks:
        row = ds[i]
        n = int(n)
        assert np.array_equal(row["Z"], Z[:n]), f"Z of structure {i}"
        assert np.array_equal(row["R"], R[:n]), f"R of structure {i}"
        assert np.allclose(row["F"], F[:n] * ef, rtol=1e-6), f"F of structure {i}"
        assert np.isclose(row["E"], E * ef, rtol=1e-6), f"E of structure {i}"


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--atoms", type=int, default=20_000_000, help="atoms in the synthetic input (default 20 M)")
    p.add_argument("--layout", choices=["ani", "flat"], default="ani", help="ANI-style groups or flat padded arrays")
    p.add_argument("--workdir", type=Path, help="where to write input and output (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the input and output files")
    p.add_argument("--smoke", action="store_true", help=f"tiny run ({SMOKE_ATOMS} atoms) that takes a few seconds")
    p.add_argument("--hartree", action="store_true", help="store energies in Hartree (units attribute) so values are scaled")
    p.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none",
                   help="HDF5 filter of the synthetic datasets (chunked by h5py); default none (contiguous)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input", type=Path, help="reuse this synthetic HDF5 file instead of writing one (needs its .json sidecar)")
    p.add_argument("--no-check", action="store_true", help="skip the spot check of the output")
    p.add_argument("--limit-mb", type=float, default=LIMIT_MB, help="peak RssAnon limit for PASS (default 1024)")
    args = p.parse_args(argv)
    atoms = SMOKE_ATOMS if args.smoke else args.atoms

    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mmlwf-bench-convert-")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"packed-{args.layout}-{os.getpid()}"
    log = workdir / f"convert-{os.getpid()}.log"
    src = args.input
    made_src = src is None
    try:
        if src is None:
            comp = None if args.compression == "none" else args.compression
            src = workdir / f"synthetic-{args.layout}-{atoms}{'-Ha' if args.hartree else ''}{'-' + comp if comp else ''}.h5"
            print(f"writing {src} ({atoms} atoms, {args.layout} layout) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            writer = write_flat if args.layout == "flat" else write_ani
            meta = writer(src, atoms, args.seed, args.hartree, comp)
            meta["gen_seconds"] = round(time.perf_counter() - t0, 2)
            meta["hartree"] = args.hartree
            meta["compression"] = comp
            Path(f"{src}.json").write_text(json.dumps(meta))
        else:
            meta = json.loads(Path(f"{src}.json").read_text())
        print(f"converting ({meta['atoms']} atoms, {meta['molecules']} structures) ...", file=sys.stderr, flush=True)
        res = run_convert(src, out, log)
        text = log.read_text(errors="replace")
        if res["returncode"] != 0:
            print(text[-4000:], file=sys.stderr)
            print(f"FAILED: mmlwf convert exited {res['returncode']}", file=sys.stderr)
            return 2
        if not args.no_check:
            spot_check(src, out, args.layout, meta)
        sec = res["seconds"]
        result = {
            "benchmark": "convert",
            "layout": args.layout,
            "units": "Hartree" if meta.get("hartree") else "eV",
            "compression": meta.get("compression"),
            "atoms": meta["atoms"],
            "molecules": meta["molecules"],
            "groups": meta["groups"],
            "seconds": round(sec, 3),
            "cpu_seconds": round(res["cpu_seconds"], 3),
            "atoms_per_s": round(meta["atoms"] / sec),
            "molecules_per_s": round(meta["molecules"] / sec),
            "peak_rss_anon_mb": round(res["peak_rss_anon_mb"], 1),
            "peak_rss_file_mb": round(res["peak_rss_file_mb"], 1),
            "peak_vm_hwm_mb": round(res["peak_vm_hwm_mb"], 1),
            "limit_mb": args.limit_mb,
            "pass": res["peak_rss_anon_mb"] < args.limit_mb,
            "memory_samples": res["samples"],
            "input_bytes": src.stat().st_size,
            "output_bytes": _dir_size(out),
            "gen_seconds": meta.get("gen_seconds"),
            "command": " ".join(res["cmd"]),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            log.unlink(missing_ok=True)
            if made_src and src is not None:
                src.unlink(missing_ok=True)
                Path(f"{src}.json").unlink(missing_ok=True)
            if made_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    r = result
    verdict = "PASS" if r["pass"] else "FAIL"
    print(
        f"mmlwf convert, {r['layout']} HDF5 ({r['units']}, {r['compression'] or 'uncompressed'}): {r['atoms']:,} atoms, {r['molecules']:,} structures\n"
        f"  wall {r['seconds']:.2f} s (cpu {r['cpu_seconds']:.2f} s): {r['atoms_per_s'] / 1e6:.2f} M atoms/s, "
        f"{r['molecules_per_s'] / 1e3:.1f} k structures/s\n"
        f"  peak RssAnon {r['peak_rss_anon_mb']:.1f} MB (limit {r['limit_mb']:.0f} MB): {verdict}; "
        f"VmHWM {r['peak_vm_hwm_mb']:.1f} MB (file pages included), {r['memory_samples']} samples\n"
        f"  input {r['input_bytes'] / 1e6:.1f} MB, output {r['output_bytes'] / 1e6:.1f} MB"
        + ("" if args.keep else " (removed)")
        + (f"; kept in {workdir}" if args.keep else "")
    )
    print(json.dumps(r), flush=True)
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
