"""Rule evaluate: metrics, predictions and plots of one run (see mmlwf.workflow.evaluate_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import evaluate_step, log_to

with log_to(snakemake.log[0]):
    evaluate_step(
        snakemake.params.run_dir,
        snakemake.input.packed,
        snakemake.input.split,
        snakemake.output.metrics,
        snakemake.output.predictions,
        snakemake.output.atoms,
        snakemake.output.plots,
        subset=snakemake.params.subset,
        checkpoint=snakemake.params.checkpoint,
    )
