"""Rule split: reproducible train/valid/test indices (mmlwf.steps.split_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import split_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    split_step(snakemake.input.packed, snakemake.output.split, **snakemake.params.settings)
