"""Rule validate: integrity report of a packed dataset; errors stop the workflow (mmlwf.steps.validate_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import validate_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    validate_step(snakemake.input.packed, snakemake.output.report, require_valid=True)
