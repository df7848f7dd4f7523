"""Pin the conda environments (``envs/*.yaml``) to the versions of ``uv.lock``.

``uv.lock`` (written by ``uv lock``) is the one record of the tested versions. The conda
environments name the same packages, some under other names (conda-forge's ``tblite-python``
is PyPI's ``tblite``), and must pin the same versions. This script rewrites every pin from the
lock (``--check``: only report differences, exit 1 if any); ``tests/test_environment.py``
runs the check.

    python devtools/conda_pins.py            # rewrite envs/*.yaml from uv.lock
    python devtools/conda_pins.py --check    # exit 1 when a pin differs from the lock
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# conda-forge name -> PyPI name, where they differ
CONDA_TO_PYPI = {"tblite-python": "tblite"}
# one dependency line: "  - name =1.2.3", "  - name ==1.2.3" (pip section) or "  - name[extra] ==1.2.3"
PIN = re.compile(r"^(?P<lead>\s*-\s+)(?P<name>[A-Za-z0-9_.\-]+)(?P<extra>\[[^\]]*\])?\s*"
                 r"(?P<op>==?|>=)\s*(?P<version>[^\s#]+)(?P<tail>.*)$")
PYTHON = "3.11"  # the Python CI tests; the lock covers every Python >= 3.11


def locked_versions(lock: Path = REPO / "uv.lock") -> dict[str, str]:
    """``{normalised PyPI name: version}`` of every package in the lock."""
    data = tomllib.loads(lock.read_text())
    return {_norm(p["name"]): p["version"] for p in data["package"]}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_lines(text: str, versions: dict[str, str]) -> tuple[str, list[str]]:
    """``(text with every pin set to the lock, [differences found])``."""
    out, diffs, pip_indent = [], [], None  # pip_indent: indentation of the "- pip:" line
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if re.match(r"^\s*-\s+pip:\s*$", line):
            pip_indent = indent
        elif pip_indent is not None and line.strip() and indent <= pip_indent:
            pip_indent = None
        m = PIN.match(line)
        if m is None:
            out.append(line)
            continue
        name = m["name"]
        if name == "python":
            want = PYTHON
        else:
            want = versions.get(_norm(CONDA_TO_PYPI.get(name, name)))
            if want is None:
                diffs.append(f"{name}: not in uv.lock")
                out.append(line)
                continue
        op = "==" if pip_indent is not None else "="  # pip's syntax inside the pip section
        if m["version"] != want or m["op"] != op:
            diffs.append(f"{name}{m['extra'] or ''}: {m['op']}{m['version']} -> {op}{want}")
        out.append(f"{m['lead']}{name}{m['extra'] or ''} {op}{want}{m['tail']}")
    return "\n".join(out) + "\n", diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = ap.parse_args(argv)
    versions = locked_versions()
    bad = 0
    for env in sorted((REPO / "envs").glob("*.yaml")):
        text = env.read_text()
        new, diffs = pinned_lines(text, versions)
        for d in diffs:
            print(f"{env.relative_to(REPO)}: {d}")
        bad += len(diffs)
        if not args.check and new != text:
            env.write_text(new)
    return 1 if (bad and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
