"""Rule train: train (or resume) one experiment (see mmlwf.workflow.train_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import log_to, train_step

with log_to(snakemake.log[0]):
    train_step(
        snakemake.params.config,
        snakemake.input.packed,
        snakemake.input.split,
        snakemake.input.stats,
        snakemake.params.run_dir,
        weights=snakemake.params.weights,
    )
