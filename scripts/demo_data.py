"""Rule demo_data: labelled conformers of small molecules, no download (mmlwf.demo)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.demo import generate_demo_data
from mmlwf.workflow import log_to

with log_to(snakemake.log[0]):
    generate_demo_data(
        snakemake.output.extxyz,
        isolated_atoms=snakemake.output.isolated_atoms,
        **snakemake.params.settings,
    )
