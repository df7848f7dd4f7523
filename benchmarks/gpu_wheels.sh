#!/bin/sh
# The wheels benchmarks/gpu_check.py needs on the lent GPU machine beyond what its image has
# (docs/gpu.md): Python 3.12, x86-64 manylinux, into the ignored folder .whl/ of the checkout,
# which the device command carries and installs with pip --no-index --no-deps --target.
#
#     sh benchmarks/gpu_wheels.sh          # here (needs pip and the package index), from any folder
#
# The image (/work/.library/device/KINDS.md) has jax 0.11.2 with CUDA 13, flax, optax,
# orbax-checkpoint, numpy, scipy, h5py, pandas, matplotlib, pyyaml, tqdm, numba, threadpoolctl,
# etils, jaxtyping, sympy, absl-py, attrs; it lacks these of our runtime needs and their
# requirements (each at its version in uv.lock; --no-deps: every requirement is named here):
#   e3x (+ more-itertools), ase, pydantic (+ pydantic-core, annotated-types,
#   typing-inspection; typing-extensions at the lock's version, as pydantic 2.14 needs a recent
#   one), jsonschema (+ jsonschema-specifications, referencing, rpds-py).
# Not carried: snakemake (the workflow, not training), tblite and pyscf (labelling only).
set -eu
cd "$(dirname "$0")/.."
WHEELS="
e3x==1.0.2
more-itertools==11.2.1
ase==3.29.0
pydantic==2.14.4
pydantic-core==2.50.5
annotated-types==0.8.0
typing-inspection==0.4.5
typing-extensions==4.16.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
"
# the pins must be uv.lock's: stop when one is not
for w in $WHEELS; do
    name=${w%%==*}; version=${w#*==}
    locked=$(awk -v n="\"$name\"" '$1 == "name" && $3 == n {getline; gsub(/"/, "", $3); print $3; exit}' uv.lock)
    if [ "$locked" != "$version" ]; then
        echo "gpu_wheels.sh: $name is $version here but ${locked:-absent} in uv.lock: update the list" >&2
        exit 1
    fi
done
rm -rf .whl
mkdir -p .whl
PY=${PYTHON:-python3}
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
# e3x's wheel is 95 MB, over the 64 MiB a device call carries: 94 MB of it is the Wigner-D lookup
# table (e3x/so3/_wigner_d_lut.npz), which only e3x.so3.wigner_d reads (on its first call);
# mmlwf never calls it. Rewrite the wheel without that file (and its RECORD line).
$PY - <<'PYEOF'
import glob, os, zipfile
DROP = "e3x/so3/_wigner_d_lut.npz"
(src,) = glob.glob(".whl/e3x-*.whl")
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if info.filename == DROP:
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(ln for ln in data.splitlines(keepends=True) if not ln.startswith(DROP.encode() + b","))
        zout.writestr(info, data)
os.replace(tmp, src)
print(f"{src}: without {DROP}")
PYEOF
ls -l .whl
du -ch .whl/*.whl | tail -1
