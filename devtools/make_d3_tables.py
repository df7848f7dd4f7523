"""Produce ``mmlwf/physics/d3_tables.npz``, the D3 reference tables of :mod:`mmlwf.physics.d3`.

Source: the Fortran sources of simple-dftd3 1.7.0 (and the mctc-lib it vendors) inside the
sdist of the Python package ``dftd3`` 1.7.0 on PyPI, the same release the tests compare with::

    https://files.pythonhosted.org/packages/c8/82/a30967e6ac28e6469afce1d8a4176d82daab7c9368ee95129bb3ca5a4b66/dftd3-1.7.0.tar.gz
    sha256 42844f1c0ba553a42b0921313b5f8d1b8877a5bee0c8419f1b73452db914d1a3

(simple-dftd3 v1.6.0, commit 6004cfd62ad2a248ad32167392bd08c674da6161 of
github.com/dftd3/simple-dftd3, has the same tables). Read from it:

- ``src/dftd3/reference.f90``: number of reference systems, their coordination numbers and
  the reference C6 coefficients (Grimme et al., JCP 132, 154104 (2010)), hartree bohr^6;
- ``src/dftd3/data/r4r2.f90``: <r4>/<r2>, stored as ``sqrt(0.5 <r4>/<r2> sqrt(Z))`` as used;
- mctc-lib ``src/mctc/data/covrad.f90``: Pyykkö-Atsumi covalent radii (Å) scaled by 4/3 and
  converted to bohr with mctc-lib's CODATA 2018 Bohr radius (``src/mctc/io/codata2018.f90``);
- ``src/dftd3/param.f90``: the rational (Becke-Johnson) damping parameters s6, s8, a1, a2 of
  every method name of ``get_method_id`` (Grimme et al., JCC 32, 1456 (2011), and later).

Usage: ``python devtools/make_d3_tables.py [dftd3-1.7.0.tar.gz]`` (downloads it when absent).
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

URL = (
    "https://files.pythonhosted.org/packages/c8/82/"
    "a30967e6ac28e6469afce1d8a4176d82daab7c9368ee95129bb3ca5a4b66/dftd3-1.7.0.tar.gz"
)
SHA256 = "42844f1c0ba553a42b0921313b5f8d1b8877a5bee0c8419f1b73452db914d1a3"
ROOT = "dftd3-1.7.0/subprojects/s-dftd3/"
MCTC = ROOT + "subprojects/mctc-lib/"
OUT = Path(__file__).resolve().parents[1] / "mmlwf" / "physics" / "d3_tables.npz"
NUMBER = r"[-+]?\d*\.?\d+(?:[eEdD][-+]?\d+)?"


def logical_lines(text: str) -> list[str]:
    """Fortran free-form statements: comments dropped, ``&`` continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        line = line.split("!", 1)[0].rstrip()
        stripped = line.lstrip()
        stripped = stripped.removeprefix("&")
        current += stripped if current else line
        if current.endswith("&"):
            current = current[:-1]
        else:
            out.append(current)
            current = ""
    return out


def numbers(text: str) -> np.ndarray:
    """Every real literal (``1.5_wp``, ``-1.0000_wp``) of a Fortran array constructor."""
    return np.array([float(x.replace("d", "e").replace("D", "e"))
                     for x in re.findall(NUMBER + r"(?=_wp)", text)])


def statement(lines: list[str], pattern: str) -> str:
    found = [line for line in lines if re.search(pattern, line)]
    if len(found) != 1:
        raise SystemExit(f"expected one statement matching {pattern!r}, found {len(found)}")
    return found[0]


def reference_tables(text: str):
    lines = logical_lines(text)
    max_elem = int(re.search(r"max_elem\s*=\s*(\d+)", statement(lines, r"max_elem\s*=")).group(1))
    max_ref = int(re.search(r"max_ref\s*=\s*(\d+)", statement(lines, r"max_ref\s*=")).group(1))
    nref_text = statement(lines, r"number_of_references\(max_elem\)\s*=").split("=", 1)[1]
    nref = np.array([int(x) for x in re.findall(r"\d+", nref_text)])
    cn_text = statement(lines, r"reference_cn\(max_ref, max_elem\)\s*=").split("=", 1)[1]
    cn = numbers(cn_text.split("[max_ref")[0]).reshape(max_elem, max_ref)  # Fortran order
    n_pairs = max_elem * (max_elem + 1) // 2
    flat = np.zeros(max_ref * max_ref * n_pairs)
    for line in lines:
        m = re.match(r"\s*c6ab_view\((\d+):(\d+)\)\s*=\s*\[(.*)\]\s*$", line)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            values = numbers(m.group(3))
            if values.size != hi - lo + 1:
                raise SystemExit(f"c6ab_view({lo}:{hi}) has {values.size} values")
            flat[lo - 1:hi] = values
    # Fortran reference_c6(iref, jref, ic) -> c6[ic, jref, iref] in C order
    c6 = flat.reshape(n_pairs, max_ref, max_ref)
    if nref.size != max_elem:
        raise SystemExit(f"{nref.size} reference counts for {max_elem} elements")
    return max_elem, nref, cn, c6.transpose(0, 2, 1)  # c6[ic, iref, jref]


def r4r2_table(text: str) -> np.ndarray:
    lines = logical_lines(text)
    values = numbers(statement(lines, r"::\s*r4_over_r2\(max_elem\)\s*=").split("=", 1)[1])
    z = np.arange(1, values.size + 1, dtype=np.float64)
    return np.sqrt(0.5 * (values * np.sqrt(z)))


def covalent_radii(covrad: str, codata: str) -> np.ndarray:
    bohr_m = float(re.search(r"atomic_unit_of_length\s*=\s*(" + NUMBER + ")_wp", codata).group(1))
    aatoau = 1.0 / (bohr_m * 1e10)
    lines = logical_lines(covrad)
    angstrom = numbers(statement(lines, r"covalent_rad_2009\(max_elem\)\s*=").split("=", 1)[1])
    return 4.0 / 3.0 * (aatoau * angstrom)


def damping_parameters(text: str) -> dict[str, tuple[float, float, float, float]]:
    """{method name: (s6, s8, a1, a2)} of ``get_rational_damping``; d3_param's defaults apply."""
    lines = logical_lines(text)
    start = lines.index(next(line for line in lines if "function get_method_id" in line))
    names: dict[str, list[str]] = {}
    for line in lines[start:]:
        if "end function get_method_id" in line:
            break
        m = re.match(r'\s*case\((.*)\);\s*id\s*=\s*(\w+)', line)
        if m:
            for name in re.findall(r'"([^"]+)"', m.group(1)):
                names.setdefault(m.group(2), []).append(name)
    defaults = {"s6": 1.0, "s8": 1.0, "a1": 0.4, "a2": 5.0}  # d3_param's defaults
    body = lines[lines.index(next(l for l in lines if "subroutine get_rational_damping" in l)):]
    body = body[:next(i for i, l in enumerate(body) if "end subroutine get_rational_damping" in l)]
    table: dict[str, tuple[float, float, float, float]] = {}
    ids: list[str] = []
    for line in body:
        m = re.match(r"\s*case\s*\((p_[\w, ]+)\)", line)
        if m:
            ids = [x.strip() for x in m.group(1).split(",")]
            continue
        m = re.match(r"\s*param\s*=\s*d3_param\((.*)\)", line)
        if m and ids:
            values = dict(defaults)
            for key, value in re.findall(r"(\w+)\s*=\s*(" + NUMBER + ")_wp", m.group(1)):
                values[key] = float(value)
            for pid in ids:
                for name in names.get(pid, []):
                    table[name] = (values["s6"], values["s8"], values["a1"], values["a2"])
    return table


def main(argv: list[str]) -> None:
    archive = Path(argv[0]) if argv else Path("dftd3-1.7.0.tar.gz")
    if not archive.exists():
        urllib.request.urlretrieve(URL, archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{archive}: sha256 {digest}, expected {SHA256}")
    with tarfile.open(archive) as tar:
        def read(name: str) -> str:
            return tar.extractfile(name).read().decode()

        max_elem, nref, ref_cn, c6 = reference_tables(read(ROOT + "src/dftd3/reference.f90"))
        r4r2 = r4r2_table(read(ROOT + "src/dftd3/data/r4r2.f90"))
        rcov = covalent_radii(read(MCTC + "src/mctc/data/covrad.f90"),
                              read(MCTC + "src/mctc/io/codata2018.f90"))
        damping = damping_parameters(read(ROOT + "src/dftd3/param.f90"))
    names = sorted(damping)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        source=np.array(f"{URL} sha256 {SHA256}"),
        number_of_references=nref.astype(np.int64),  # (max_elem,) for Z = 1..max_elem
        reference_cn=ref_cn,  # (max_elem, max_ref)
        c6_triangle=c6,  # (max_elem (max_elem+1)/2, max_ref, max_ref), pair ic of Z_i >= Z_j
        r4r2=r4r2[:max_elem],  # (max_elem,) sqrt(0.5 <r4>/<r2> sqrt(Z))
        covalent_radii=rcov[:max_elem],  # (max_elem,) bohr, 4/3 Pyykkö-Atsumi
        functionals=np.array(names),
        damping=np.array([damping[n] for n in names]),  # (F, 4): s6, s8, a1, a2 (a2 in bohr)
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): Z 1-{max_elem}, {len(names)} functionals")


if __name__ == "__main__":
    main(sys.argv[1:])
