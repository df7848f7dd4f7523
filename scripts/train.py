"""Rule train: train (or resume) one experiment (mmlwf.steps.train_step); exit 75 when interrupted."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import train_step
from mmlwf.training import exit_code
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    summary = train_step(
        snakemake.params.config,
        snakemake.input.packed,
        snakemake.input.split,
        snakemake.input.stats,
        snakemake.params.run_dir,
        weights=snakemake.params.weights,
        progress=False,
    )
    sys.exit(exit_code(summary))
