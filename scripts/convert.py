"""Rule convert: the dataset's sources into a packed directory (see mmlwf.workflow.convert_step)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parent))  # this repository's mmlwf

from mmlwf.workflow import convert_step, log_to

with log_to(snakemake.log[0]):
    convert_step(
        snakemake.input.sources,
        snakemake.output.packed,
        format=snakemake.params.format,
        energy_unit=snakemake.params.energy_unit,
        length_unit=snakemake.params.length_unit,
        dipole_unit=snakemake.params.dipole_unit,
        keys=snakemake.params.key_map,
        esp=snakemake.params.esp,
    )
