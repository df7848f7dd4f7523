"""Rule split: reproducible train/valid/test indices (see mmlwf.workflow.split_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import log_to, split_step

with log_to(snakemake.log[0]):
    split_step(snakemake.input.packed, snakemake.output.split, snakemake.params.settings)
