#!/usr/bin/env bash
# CI block for the cluster path (issue 8): a one-node SLURM on this machine (.ci/slurm.sh), the
# tests marked `slurm` against it (the tiny workflow through profiles/slurm, equal to a local
# run; scancel and node-failure recovery), and the cluster stopped again whatever happens.
# Called from .ci/run before the README's test command. About 10 min on this 2-core machine (measured: 10 min 8 s).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== SLURM: local cluster and the tests marked slurm (in the environment .ci/run made)"
trap '.ci/slurm.sh stop' EXIT
.ci/slurm.sh start
set +e
python -m pytest -q -m slurm -n 0 -p no:cacheprovider   # one at a time: one cluster node
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "slurm tests failed (rc=$rc); daemon logs in ${MMLWF_SLURM_DIR:-/tmp/mmlwf-slurm}/log/"
    exit "$rc"
fi
