"""Rule report: comparison table and self-contained HTML report (mmlwf.steps.report_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import report_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    report_step(snakemake.params.run_dirs, snakemake.output.html, snakemake.output.table)
