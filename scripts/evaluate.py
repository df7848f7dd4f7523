"""Rule evaluate: metrics, predictions and plots of one run (mmlwf.steps.evaluate_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.steps import evaluate_step
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    evaluate_step(
        snakemake.params.run_dir,
        snakemake.input.packed,
        snakemake.input.split,
        snakemake.output.metrics,
        predictions=snakemake.output.predictions,
        atom_predictions=snakemake.output.atoms,
        plots=snakemake.output.plots,
        subset=snakemake.params.subset,
        checkpoint=snakemake.params.checkpoint,
    )
