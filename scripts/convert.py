"""Rule convert: the dataset's sources into a packed directory (mmlwf.steps.convert_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import convert_options, convert_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    convert_step(
        snakemake.input.sources,
        snakemake.output.packed,
        convert_options(snakemake.params.settings),
        overwrite=True,
    )
