"""The adapter layer: one function per step, shared by ``mmlwf <command>`` and the rules.

``mmlwf.cli`` only parses argv into these calls, and the Snakemake ``script:`` wrappers in
``scripts/`` only map ``snakemake.input``/``output``/``params`` into them, so a command and
its rule run the same code with the same defaults (which live in the library functions the
steps call: :class:`mmlwf.convert.ConvertOptions`, :class:`mmlwf.label.LabelSettings`,
``mmlwf.split.split_dataset``, ``mmlwf.stats.compute_stats``, ...).

Each step reports its result in one line through ``out`` (anything with ``info``,
``warning`` and ``error`` methods): the rules pass the ``mmlwf`` logger (the rule's log
file, see :func:`mmlwf.workflow.log_to`), the CLI a terminal printer
(:class:`mmlwf.commands.common.Terminal`).
"""

from __future__ import annotations

from .data import (
    convert_options,
    convert_step,
    label_step,
    point_settings,
    split_step,
    stats_step,
    validate_step,
)
from .runs import evaluate_step, report_step, train_step

__all__ = [
    "convert_options", "convert_step", "evaluate_step", "label_step", "point_settings", "report_step",
    "split_step", "stats_step", "train_step", "validate_step",
]
