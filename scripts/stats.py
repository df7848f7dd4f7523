"""Rule stats: statistics of the training split (mmlwf.steps.stats_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import stats_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    stats_step(
        snakemake.input.packed,
        snakemake.input.split,
        snakemake.output.stats,
        element_energies=snakemake.params.element_energies,
    )
