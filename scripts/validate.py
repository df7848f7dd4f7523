"""Rule validate: integrity report of a packed dataset; errors stop the workflow."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import log_to, validate_step

with log_to(snakemake.log[0]):
    validate_step(snakemake.input.packed, snakemake.output.report)
