"""Captions of the analysis figures, shared by the HTML report and the workflow's
``report()`` outputs (:func:`write_rst` writes them as the ``.rst`` files Snakemake wants)."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_write

CAPTIONS: dict[str, str] = {
    "learning_curves.png": (
        "Learning curves: training (blue) and validation (orange) error of each trained term against the "
        "epoch, in the units of the field (meV, meV/Å, D, e, kcal/(mol·e)), MAE solid and RMSE dashed, on a "
        "log scale; the first panel is the loss (weighted sum of the terms' mean squared errors, in "
        "mmlwf's units eV, Å, e). A training error is the mean over the epoch's batches, each computed with "
        "the model parameters of that moment, which change during the epoch; a validation error is that of "
        "the parameters at the end of the epoch (their exponential moving average, EMA, when the run kept "
        "one), which is why the training curve usually lies above the validation curve. Terms the run did "
        "not train (loss weight 0) and terms the model enforces exactly (the total charge, at float32 "
        "rounding level) are named under the panels instead of plotted."),
    "parity_energy.png": (
        "Energy parity: predicted against reference energy (eV) of each evaluated structure, both minus "
        "the sum of element energies fitted by least squares to these reference energies (independent of "
        "the element energies the training used), so that conformational energies and their errors are "
        "visible in a set of several molecules; with the line y = x, MAE and RMSE in meV in the corner. "
        "Points become a log-density hexbin above 2000 points."),
    "parity_forces.png": (
        "Force parity: predicted against reference Cartesian force components (eV/Å) of every atom of "
        "the evaluated structures, with y = x, MAE and RMSE in meV/Å in the corner; a log-density hexbin above "
        "2000 points."),
    "error_histogram.png": (
        "Error distributions (number of structures or force components per bin): energy error per "
        "structure (meV), force component errors (meV/Å) and, for models with charges on data with "
        "dipoles, the length of each structure's dipole error vector (D)."),
    "force_errors_by_element.png": (
        "Force component MAE and RMSE (meV/Å) per element over the evaluated structures, with the "
        "number of atoms of each element."),
    "esp_error.png": (
        "Electrostatic potential over the grid points of the evaluated structures, in kcal/(mol·e): "
        "predicted against reference ESP (y = x dashed; a log-density hexbin above 2000 points), the "
        "absolute error against the distance from the point to the nearest atom, and the error at each "
        "grid point of the first evaluated structure (its index in the dataset in the panel title), "
        "projected on its first two principal axes, with its nuclei."),
    "charge_positions.png": (
        "Distributed charges of the first evaluated structure (its index in the dataset in the title): "
        "nuclei (circles in element colours, element symbols beside them) and the model's off-centre "
        "charges (diamonds coloured by charge, e), each joined to its atom by a line, in two projections "
        "of the molecule's principal-axes frame (Å)."),
    "error_vs_spread.png": (
        "Ensembles only. Error against spread: the length of the error of the ensemble mean against the "
        "spread over its members (the root mean squared deviation of the members from their mean; per "
        "structure for energies, per atom for forces), times the scale factor fitted on the validation split "
        "when the run has one, on log axes in the units of the field. Blue: the RMS error in equal-count bins "
        "of spread against the bins' RMS spread (orange dashed: with the raw spreads); a calibrated ensemble's "
        "bins lie on the dotted line y = x, bins above it are overconfident. The rank correlation of error "
        "and spread is in the calibration table."),
    "calibration_curve.png": (
        "Ensembles only. Calibration curve: for each expected proportion p, the fraction of points whose "
        "error lies inside the central region of probability p of a Gaussian with the spread as its width "
        "(isotropic in three dimensions for forces), for the raw spreads (orange) and the spreads times the "
        "fitted scale (blue, when the run has one). On the diagonal when calibrated, below it when "
        "overconfident; the miscalibration area (0 to 0.5) is the area between curve and diagonal."),
}


def caption(name: str) -> str:
    """The caption of figure file ``name`` (e.g. ``"parity_forces.png"``)."""
    try:
        return CAPTIONS[Path(name).name]
    except KeyError:
        raise KeyError(f"no caption for '{name}' (known: {', '.join(CAPTIONS)})") from None


def write_rst(directory: str | os.PathLike) -> list[Path]:
    """Write one ``<figure stem>.rst`` caption file per figure into ``directory``."""
    out = []
    for name, text in CAPTIONS.items():
        path = Path(directory) / f"{Path(name).stem}.rst"
        with atomic_write(path) as fh:
            fh.write(text + "\n")
        out.append(path)
    return out
