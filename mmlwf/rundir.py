"""A run directory and the names of its files (the one home of them)::

    <run>/model.json     model settings, units, element energies, n_parameters (what to rebuild it)
          config.yaml    the training's full configuration
          history.csv    one row per epoch        train.log   the training's notes
          checkpoints/   latest/ (resume), best/ (lowest validation loss)
          tensorboard/   the history as TensorBoard scalars (training.tensorboard)
          metrics.json, predictions.csv, predictions_atoms.npz, plots/   written by the analysis

:class:`RunDir` reads ``model.json``, the model kind, the history and the parameter count
without jax; :meth:`RunDir.load` rebuilds the trained model (:mod:`mmlwf.inference`).
"""

from __future__ import annotations

import json
import math
import os
from functools import cached_property
from pathlib import Path

from .errors import DataError

MODEL_JSON = "model.json"
CONFIG_YAML = "config.yaml"
HISTORY_CSV = "history.csv"
TRAIN_LOG = "train.log"
CHECKPOINTS = "checkpoints"
LATEST, BEST = "latest", "best"
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.csv"
ATOMS_FILE, PLOTS_DIR = "predictions_atoms.npz", "plots"
TENSORBOARD_DIR = "tensorboard"


class RunDir:
    """The run directory ``path`` (need not exist yet: the training creates it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- file names
    @property
    def model_json(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def config_yaml(self) -> Path:
        return self.path / CONFIG_YAML

    @property
    def history_csv(self) -> Path:
        return self.path / HISTORY_CSV

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files of the training (``training.tensorboard``)."""
        return self.path / TENSORBOARD_DIR

    def checkpoint(self, which: str = BEST) -> Path:
        """The orbax directory of the ``best`` or ``latest`` checkpoint."""
        return self.checkpoints / which

    def has_checkpoint(self, which: str = BEST) -> bool:
        return self.checkpoint(which).is_dir()

    def file(self, name: str) -> Path:
        """``<run>/name`` (e.g. :data:`METRICS_FILE`)."""
        return self.path / name

    # -- model.json
    def is_run(self) -> bool:
        """Whether ``model.json`` exists (a training has started here)."""
        return self.model_json.is_file()

    @cached_property
    def info(self) -> dict:
        """``model.json`` (one-line :class:`DataError` when absent or not JSON)."""
        path = self.model_json
        try:
            with open(path) as fh:
                info = json.load(fh)
        except FileNotFoundError:
            raise DataError("not a run directory (no model.json)", path=path) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
        if not isinstance(info, dict):
            raise DataError("not a model.json (not a mapping)", path=path)
        return info

    @property
    def model_type(self) -> str:
        """The model kind's name (``model.type``; the default kind when not recorded)."""
        from .models.registry import DEFAULT

        return str(dict(self.info.get("model") or {}).get("type", DEFAULT)).lower()

    @property
    def kind(self):
        """The :class:`~mmlwf.models.registry.ModelKind` of the run."""
        from .models.registry import get

        return get(self.model_type)

    def n_parameters(self, which: str = BEST) -> int | None:
        """Trainable parameters: ``model.json``'s ``n_parameters``, else (runs of older
        versions) counted from the ``which`` checkpoint's array metadata without restoring
        it; None when neither says."""
        n = self.info.get("n_parameters") if self.model_json.is_file() else None
        if isinstance(n, int):
            return n
        return checkpoint_parameter_count(self.checkpoint(which))

    # -- history
    def history_rows(self) -> list[dict]:
        """``history.csv`` as row dicts (:func:`mmlwf.training.history.read_history`)."""
        from .training.history import read_history

        return read_history(self.history_csv)

    def history_frame(self):
        """``history.csv`` as a :class:`pandas.DataFrame` (one-line :class:`DataError` when
        absent, unreadable or empty)."""
        import pandas as pd

        path = self.history_csv
        if not path.exists():
            raise DataError("no history.csv (has the run trained an epoch?)", path=path)
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable history ({' '.join(str(exc).split())})", path=path) from None
        if df.empty:
            raise DataError("no epochs recorded", path=path)
        return df

    # -- the trained model
    def load(self, which: str = BEST):
        """The :class:`~mmlwf.inference.TrainedModel` of the ``which`` checkpoint."""
        from .inference import load_run

        return load_run(self.path, which)


def checkpoint_parameter_count(directory: str | os.PathLike) -> int | None:
    """Parameters in an orbax checkpoint directory (``checkpoints/best``: its newest step's
    ``params`` item), from the shapes in its metadata file; None if it cannot tell."""
    directory = Path(directory)
    try:
        steps = sorted((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        return None
    if not steps:
        return None
    try:
        meta = json.loads((steps[-1] / "params" / "_METADATA").read_text())
        shapes = [v["value_metadata"]["write_shape"] for v in meta["tree_metadata"].values()]
        return int(sum(math.prod(s) for s in shapes))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
