"""How reports name and scale error quantities, and which loss terms a run trained.

Metrics are computed and stored in mmlwf's canonical units with the unit in the name
(``energy_mae_eV``, ``dipole_rmse_eA``, ``esp_mae_kcal_per_mol_e``: :mod:`.evaluate`).
Reports show them in the units of the field (energy meV and meV/atom, forces meV/Å, dipole
D, charges e, ESP kcal/(mol·e)) under names a chemist uses ("atomic charges", not "mono").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import yaml

from ..rundir import RunDir
from ..units import DEBYE_PER_E_ANGSTROM, ESP

#: readable name of each quantity (loss term or metric stem)
NAMES = {
    "loss": "loss",
    "energy": "energy",
    "energy_per_atom": "energy per atom",
    "forces": "forces",
    "forces_norm": "force vector length",
    "dipole": "dipole",
    "dipole_norm": "dipole vector length",
    "charge": "total charge",
    "mono": "atomic charges",
    "esp": "ESP",
}
#: the loss term each metric stem belongs to
TERM_OF = {"energy_per_atom": "energy", "forces_norm": "forces", "dipole_norm": "dipole"}
_STATS = {"mae": "MAE", "rmse": "RMSE", "max_abs_error": "max |error|"}
#: canonical unit suffix -> (factor to the field unit, field unit shown, field unit in machine names)
FIELD_UNITS = {
    "eV": (1e3, "meV", "meV"),
    "eV_per_A": (1e3, "meV/Å", "meV_per_A"),
    "eA": (DEBYE_PER_E_ANGSTROM, "D", "D"),
    "e": (1.0, "e", "e"),
    "V": (1.0 / ESP["kcal/mol/e"], "kcal/(mol·e)", "kcal_per_mol_e"),
    "kcal_per_mol_e": (1.0, "kcal/(mol·e)", "kcal_per_mol_e"),
}
_METRIC = re.compile(r"^(?P<stem>[a-z_]+?)_(?P<stat>mae|rmse|max_abs_error)_(?P<unit>"
                     + "|".join(sorted(map(re.escape, FIELD_UNITS), key=len, reverse=True)) + ")$")
#: the headline errors of a comparison, in order (canonical metric names)
HEADLINE = ("energy_mae_eV", "energy_rmse_eV", "energy_per_atom_mae_eV", "forces_mae_eV_per_A",
            "forces_rmse_eV_per_A", "dipole_mae_eA", "dipole_rmse_eA", "mono_mae_e", "mono_rmse_e",
            "esp_mae_kcal_per_mol_e", "esp_rmse_kcal_per_mol_e")


def parse(metric: str) -> dict | None:
    """``{"stem", "stat", "unit", "term"}`` of a metric name, or None for another name."""
    m = _METRIC.match(metric)
    if not m or m["stem"] not in NAMES:
        return None
    return {**m.groupdict(), "term": TERM_OF.get(m["stem"], m["stem"])}


def field_unit(metric: str) -> tuple[float, str, str]:
    """``(factor, unit shown, unit in machine names)`` converting ``metric`` to its field unit."""
    p = parse(metric)
    if p is None:
        raise KeyError(f"not a metric name: {metric!r}")
    factor, shown, machine = FIELD_UNITS[p["unit"]]
    if p["stem"] == "energy_per_atom":
        return factor, f"{shown}/atom", f"{machine}_per_atom"
    return factor, shown, machine


def label(metric: str) -> str:
    """Readable name of a metric without its unit (``"energy per atom MAE"``)."""
    p = parse(metric)
    if p is None:
        return metric.replace("_", " ")
    return f"{NAMES[p['stem']]} {_STATS[p['stat']]}"


def field_name(metric: str) -> str:
    """The metric's machine name in its field unit (``energy_mae_eV`` -> ``energy_mae_meV``)."""
    p = parse(metric)
    return f"{p['stem']}_{p['stat']}_{field_unit(metric)[2]}"


def in_field_units(metric: str, value: float | None) -> tuple[str, float | None, str]:
    """``(readable name, value in the field unit, unit shown)``."""
    factor, shown, _ = field_unit(metric)
    return label(metric), None if value is None else float(value) * factor, shown


# ----------------------------------------------------------------------------- trained terms


def training_with_defaults(training: Mapping | None) -> dict:
    """Training settings (a ``config.yaml``'s ``training`` section) with defaults for missing keys."""
    import dataclasses

    from ..training.config import training_config

    defaults = training_config({})
    defaults = dataclasses.asdict(defaults) if dataclasses.is_dataclass(defaults) else dict(defaults)
    return defaults | dict(training or {})


def run_training_config(run_dir: str | os.PathLike) -> dict:
    """The run's ``training`` settings (``config.yaml``), defaults filled in for missing keys."""
    try:
        cfg = yaml.safe_load(RunDir(run_dir).config_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    return training_with_defaults(cfg.get("training") if isinstance(cfg, Mapping) else None)


def term_weights(training: Mapping) -> dict[str, float]:
    """Loss weight of each term (``{"energy": 1.0, "mono": 0.0, ...}``) from training settings."""
    return {t: float(training.get(f"{t}_weight") or 0.0) for t in NAMES if f"{t}_weight" in training}


def trained(metric_or_term: str, weights: Mapping[str, float]) -> bool:
    """Whether the run's loss had the term of this metric (a term it does not weigh: False)."""
    p = parse(metric_or_term)
    term = p["term"] if p else metric_or_term
    return weights.get(term, 0.0) > 0
