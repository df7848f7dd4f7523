"""Rule label: pyscf reference ESP, energy and dipole (mmlwf.steps.label_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import label_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    label_step(
        snakemake.input.sources,
        snakemake.output.packed,
        cache_dir=snakemake.params.cache,
        threads=snakemake.threads,
        overwrite=True,
        **snakemake.params.settings,
    )
