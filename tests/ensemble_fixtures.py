"""Ensemble runs for tests, made from a trained single run without training again.

:func:`make_ensemble_run` writes a new run directory whose ``best`` checkpoint holds ``M``
perturbed copies of the single run's parameters stacked along a leading member axis and whose
``model.json`` has the ``ensemble`` entry of :mod:`mmlwf.ensemble` (what ensemble training
writes). :func:`member_models` gives the members one by one as single models, to check
ensemble predictions against. Import the fixture with
``from .ensemble_fixtures import ensemble_run  # noqa: F401`` (it builds on
:func:`tests.analysis_fixtures.trained_run`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .analysis_fixtures import TrainedRun, trained_run  # noqa: F401 (the fixture ensemble_run uses)

#: members of the fixture ensemble, relative size of the perturbations, fitted scales written
ENSEMBLE_SIZE, NOISE, SCALE = 3, 0.2, {"energy": 2.0, "forces": 0.5}
#: files of the single run copied as they are (evaluation outputs and checkpoints are not)
COPIED = ("config.yaml", "history.csv", "train.log")


def _perturbed(leaf: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """``leaf`` plus Gaussian noise of ``noise`` times its RMS (0.01 for an all-zero leaf)."""
    leaf = np.asarray(leaf)
    if not np.issubdtype(leaf.dtype, np.floating):
        return leaf
    rms = float(np.sqrt(np.mean(np.square(leaf, dtype=np.float64)))) if leaf.size else 0.0
    return (leaf + noise * (rms or 0.01) * rng.standard_normal(leaf.shape)).astype(leaf.dtype)


def make_ensemble_run(source: str | Path, dest: str | Path, *, size: int = ENSEMBLE_SIZE, noise: float = NOISE,
                      seed: int = 0, scale: dict | None = None) -> Path:
    """Write ``dest``: the run ``source`` as an ensemble of ``size`` members, member ``k`` its
    ``best`` parameters (and EMA parameters) plus noise of ``noise`` times each leaf's RMS
    (``default_rng((seed, k))``); ``scale``: the ``ensemble.scale`` to record (None: none)."""
    import jax

    from mmlwf.training.checkpoint import CheckpointStore, checkpoint_meta, load_params

    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True)
    for name in COPIED:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    info = json.loads((source / "model.json").read_text())
    info["ensemble"] = {"size": size, "kind": "full", "member_seeds": list(range(size))}
    if scale is not None:
        info["ensemble"]["scale"] = dict(scale)
    (dest / "model.json").write_text(json.dumps(info, indent=2) + "\n")

    def stacked(tree):
        rngs = [np.random.default_rng((seed, k)) for k in range(size)]
        return jax.tree.map(lambda leaf: np.stack([_perturbed(leaf, r, noise) for r in rngs]), tree)

    params = stacked(load_params(source, "best", ema=False)[0])
    ema = stacked(load_params(source, "best", ema=True)[0]) if info.get("ema") else None
    store = CheckpointStore(dest / "checkpoints")
    try:
        store.save_best(int(checkpoint_meta(source, "best").get("epoch", 1)), params, ema,
                        checkpoint_meta(source, "best"))
    finally:
        store.close()
    return dest


def member_models(trained) -> list:
    """The members of an ensemble :class:`~mmlwf.inference.TrainedModel` as single models
    (``model.json`` without ``ensemble``, parameters of member ``k``)."""
    from mmlwf.ensemble import ensemble_size, member
    from mmlwf.inference import TrainedModel

    info = {k: v for k, v in trained.info.items() if k != "ensemble"}
    return [TrainedModel(trained.model, member(trained.params, k), info, trained.reference, trained.run_dir)
            for k in range(ensemble_size(trained.info))]


@pytest.fixture(scope="session")
def ensemble_run(trained_run: TrainedRun, tmp_path_factory) -> TrainedRun:  # noqa: F811
    """:func:`tests.analysis_fixtures.trained_run` made an ensemble of :data:`ENSEMBLE_SIZE`
    members with spread scales :data:`SCALE` (same dataset and split)."""
    root = tmp_path_factory.mktemp("ensemble")
    run = make_ensemble_run(trained_run.run, root / "runs" / "tiny_ensemble", scale=SCALE)
    return TrainedRun(trained_run.root, trained_run.data, trained_run.split, run)
