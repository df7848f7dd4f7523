"""Rule label: pyscf reference ESP, energy and dipole (see mmlwf.workflow.label_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import label_step, log_to

with log_to(snakemake.log[0]):
    label_step(snakemake.input.sources, snakemake.output.packed, snakemake.params.settings,
               snakemake.params.cache, threads=snakemake.threads)
