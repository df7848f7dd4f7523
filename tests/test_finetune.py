"""Fine-tuning (``finetune:``, :mod:`mmlwf.training.finetune`): the source's weights are loaded
(the first step's loss is the source's loss on that batch), its model settings used (a
contradicting one is one line), frozen parts stay bitwise, reset heads and new elements start
fresh, model.json records the source, and an interrupted fine-tuning run resumes exactly from
its own checkpoint without reading the source again."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from mmlwf.errors import ConfigError
from mmlwf.models import build_model, init_params
from mmlwf.models.registry import get
from mmlwf.training import load_config, load_params, train
from mmlwf.training.config import Config
from mmlwf.training.finetune import _names, open_source, source_config, start_variables
from mmlwf.training.runner import run_training as run_from_files

from .test_training import (
    BASE,
    PairModel,
    assert_same_history,
    assert_same_latest_params,
    element_energies,
    history_rows,
    make_data,
)

SMALL = {"type": "physnet", "features": 8, "num_iterations": 1, "num_basis_functions": 4, "cutoff": 3.0,
         "num_residual": 1}
PHYSNET = {"model": SMALL, "training": {"batch_size": 8, "max_epochs": 1, "warmup_steps": 2, "seed": 0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("finetune_data"), n_water=24, n_methane=16)


def from_files(config: dict, data: Path, run_dir: Path) -> dict:
    return run_from_files(config, data / "packed", data / "split.npz", data / "stats.json", run_dir, progress=False)


@pytest.fixture(scope="module")
def physnet_source(data, tmp_path_factory):
    """A PhysNet run trained on water and methane (H, C, O), one epoch."""
    run = tmp_path_factory.mktemp("physnet_source") / "run"
    from_files(PHYSNET, data, run)
    return run


def one_batch_loader(data: Path, indices: str = "valid", batch_size: int = 16):
    """The ``indices`` split of ``data`` in fixed order (one batch of 16 structures)."""
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split

    ds, sp = PackedDataset(data / "packed"), load_split(data / "split.npz")
    loader = BatchLoader(ds, getattr(sp, indices), batch_size=batch_size, cutoff=BASE["model"]["cutoff"], seed=0,
                         n_shapes=1, shuffle=False)
    assert len(loader) == 1
    return loader


def pair_run(run_dir: Path, data: Path, finetune: dict | None = None, train_loader=None, epochs: int = 2,
             **kwargs) -> dict:
    """The PairModel of tests/test_training.py trained (or fine-tuned) with BASE's settings."""
    config = load_config({**BASE, **({"finetune": finetune} if finetune else {})}, [f"training.max_epochs={epochs}"])
    from .test_training import loaders

    tl, vl = loaders(data, config)
    return train(run_dir, model=PairModel(), config=config, train_loader=train_loader or tl,
                 valid_loader=kwargs.pop("valid_loader", vl), element_energies=element_energies(data),
                 progress=False, **kwargs)


def flat(tree) -> dict[str, np.ndarray]:
    return {n: np.asarray(x) for n, x in zip(_names(tree), jax.tree.leaves(tree))}


def test_first_step_loss_is_the_source_models_loss_on_that_batch(data, tmp_path):
    valid = one_batch_loader(data)
    source = pair_run(tmp_path / "source", data, valid_loader=valid)  # its best: the EMA weights' valid loss
    assert source["best_loss"] is not None
    pair_run(tmp_path / "tuned", data, {"init_from": str(tmp_path / "source")}, train_loader=one_batch_loader(data),
             valid_loader=None)
    first = float(history_rows(tmp_path / "tuned")[0]["train_loss"])
    # the first step's loss (taken before its update) is the source's best validation loss on that batch
    np.testing.assert_allclose(first, source["best_loss"], rtol=2e-6)
    pair_run(tmp_path / "scratch", data, train_loader=one_batch_loader(data), valid_loader=None)
    scratch = float(history_rows(tmp_path / "scratch")[0]["train_loss"])
    assert abs(scratch - source["best_loss"]) > 1e-3 * source["best_loss"]
    config = load_config({**BASE, "finetune": {"init_from": str(tmp_path / "source")}})
    assert config.training.learning_rate == config.finetune.learning_rate == 3.0e-4  # the fine-tuning rate
    assert "finetune" in config.to_dict() and "finetune" not in load_config(BASE).to_dict()


def test_model_settings_come_from_the_source_and_a_contradiction_is_one_line(physnet_source):
    given = load_config({"model": {"features": 8, "charges": "auto"},
                         "finetune": {"init_from": str(physnet_source)}})
    resolved = source_config(given)
    assert resolved.model["features"] == 8 and resolved.model["num_residual"] == 1 and resolved.model["cutoff"] == 3.0
    bad = Config({"features": 32}, given.training, finetune=given.finetune)
    with pytest.raises(ConfigError, match=r"^model.features: 32 contradicts the source model's 8") as err:
        source_config(bad)
    assert "\n" not in str(err.value)


def test_missing_or_invalid_source_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for path, what in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "is not a trained run"),
                       (tmp_path / "notes.txt", "is neither a run directory nor an exported model")):
        with pytest.raises(ConfigError, match=what) as err:
            open_source(path)
        assert str(err.value).startswith(f"finetune.init_from: {path}") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^finetune.freeze needs finetune.init_from"):
        load_config({"finetune": {"freeze": ["embedding"]}})


def fresh_variables(model, data, seed: int, stats: dict | None = None):
    from mmlwf.packed import PackedDataset

    from .test_physnet import one_batch

    fresh = init_params(model, jax.random.PRNGKey(seed), one_batch(PackedDataset(data / "packed"), indices=[0, 1],
                                                                   cutoff=3.0))
    return fresh if stats is None else get("physnet").init_from_stats(model, fresh, stats)[0]


def test_reset_heads_and_new_elements_start_fresh_the_rest_is_the_source(data, physnet_source, tmp_path):
    from mmlwf.export import export_model

    config = source_config(load_config({"finetune": {"init_from": str(physnet_source), "reset_heads": True}}))
    model = build_model(config.model)  # the source's settings (charges resolved to true from the data's dipoles)
    stats = {"energy_residual_per_atom": {"mean": -3.0, "std": 0.5, "rms": 3.0}}
    fresh = fresh_variables(model, data, 7, stats)
    refs = {**element_energies(data), "7": -100.0}  # the target data have nitrogen, the source never saw it
    (out,), note = start_variables(model, config, refs, [fresh])
    src, got, new = flat(load_params(physnet_source, "best")[0]), flat(out), flat(fresh)
    heads = [n for n in got if n.startswith(("output_", "output_residual_"))]
    assert heads and "heads re-initialised" in note and "elements new to the source (N)" in note
    for name in got:
        if name in heads:
            np.testing.assert_array_equal(got[name], new[name])
        elif name.startswith(("embed/", "energy_")):  # per-element tables: row 7 fresh, the rest the source's
            np.testing.assert_array_equal(np.delete(got[name], 7, axis=0), np.delete(src[name], 7, axis=0))
            np.testing.assert_array_equal(got[name][7], new[name][7])
        else:
            np.testing.assert_array_equal(got[name], src[name])
    assert got["energy_shift"][7] == np.float32(-3.0) and got["energy_shift"][1] == src["energy_shift"][1]
    assert not np.array_equal(got["embed/embedding"][1], new["embed/embedding"][1])
    # an exported source gives the same start; a source of another size is refused
    export_model(physnet_source, tmp_path / "model.mmlwf")
    exported = source_config(load_config({"finetune": {"init_from": str(tmp_path / "model.mmlwf")}}))
    (same,), _ = start_variables(model, exported, element_energies(data), [fresh])
    for name, value in flat(same).items():
        if not name.startswith("output"):
            np.testing.assert_array_equal(value, src[name])
    with pytest.raises(ConfigError, match="the source has 1 member.*this run trains 2: fine-tune with ensemble.size 1"):
        start_variables(model, config, refs, [fresh, fresh])


def test_frozen_parts_stay_bitwise_the_others_train_and_model_json_records_the_source(data, physnet_source,
                                                                                      tmp_path):
    config = {"training": {**PHYSNET["training"], "optimizer": "adamw", "weight_decay": 1e-3, "max_epochs": 2},
              "finetune": {"init_from": str(physnet_source), "freeze": ["embedding", "interaction"]}}
    from_files(config, data, tmp_path / "tuned")
    src = flat(load_params(physnet_source, "best")[0])
    params, ema = flat(load_params(tmp_path / "tuned", "latest", ema=False)[0]), \
        flat(load_params(tmp_path / "tuned", "latest", ema=True)[0])
    frozen = [n for n in src if n.startswith(("embed/", "message_", "neighbour_", "self_", "gate_", "update_",
                                              "interaction_residual_", "atomic_residual_"))]
    assert "embed/embedding" in frozen and len(frozen) < len(src)
    for name in src:
        if name in frozen:  # zero updates, no weight decay, no EMA drift
            np.testing.assert_array_equal(params[name], src[name])
            np.testing.assert_array_equal(ema[name], src[name])
        elif name.startswith(("output_", "energy_scale")):
            assert not np.array_equal(params[name], src[name]), name
    info = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert info["model"]["features"] == 8 and info["model"]["num_iterations"] == 1  # the source's settings
    record = info["metadata"]["init_from"]
    assert record["path"] == str(physnet_source) and record["kind"] == "run"
    assert len(record["model_json_sha256"]) == 64
    assert info["initialised_from_stats"].startswith(f"fine-tuning from {physnet_source} (run, its EMA parameters)")
    assert "energy shift aligned to the target data" in info["initialised_from_stats"]
    with pytest.raises(ConfigError, match="^finetune.freeze: unknown part 'embeding'.*did you mean 'embedding'"):
        from_files({**config, "finetune": {**config["finetune"], "freeze": ["embeding"]}}, data, tmp_path / "bad")


def test_another_level_of_theory_is_aligned_by_the_energy_shift(data, physnet_source):
    """Target energies c eV per atom above the source's (element references c lower): the
    aligned shift is c above the one on the source's own data, and the aligned model has no
    mean error per atom left on either."""
    from mmlwf.batching import BatchLoader
    from mmlwf.element_energies import reference_table
    from mmlwf.packed import PackedDataset
    from mmlwf.split import load_split
    from mmlwf.training.finetune import align_energy, energy_offset
    from mmlwf.training.losses import prepare_batch

    config = source_config(load_config({"finetune": {"init_from": str(physnet_source)}}))
    model, kind = build_model(config.model), get("physnet")
    forward = kind.make_forward(model)
    source = load_params(physnet_source, "best")[0]
    train = load_split(data / "split.npz").train
    loader = BatchLoader(PackedDataset(data / "packed"), train, batch_size=16,
                         cutoff=3.0, seed=0, n_shapes=1, shuffle=False)
    c = 0.75
    refs = element_energies(data)
    shifted = {z: e - c for z, e in refs.items()}
    same, other = ([prepare_batch(b, reference_table(r)) for b in loader.epoch(0)] for r in (refs, shifted))
    (own,), note = align_energy(kind, [source], forward, same)
    (moved,), _ = align_energy(kind, [source], forward, other)
    assert note.startswith("energy shift aligned to the target data") and f"on {len(train)} training" in note
    np.testing.assert_allclose(flat(moved)["energy_shift"] - flat(own)["energy_shift"], c, atol=1e-5)
    assert abs(energy_offset(forward, moved, other)) < 1e-5 and abs(energy_offset(forward, own, same)) < 1e-5
    for name, value in flat(moved).items():  # nothing but the shift changes
        if name != "energy_shift":
            np.testing.assert_array_equal(value, flat(source)[name])
    pair = align_energy(None, [source], forward, same)
    assert pair[0][0] is source and "has no energy offset" in pair[1]
    assert load_config({"finetune": {"init_from": "x", "align_energy": False}}).finetune.align_energy is False


def test_interrupted_fine_tuning_resumes_exactly_from_its_own_checkpoint(data, tmp_path):
    pair_run(tmp_path / "source", data)
    finetune = {"init_from": str(tmp_path / "source")}
    pair_run(tmp_path / "whole", data, finetune, epochs=3)

    def sigterm_at(epoch, batch):
        if (epoch, batch) == (1, 3):
            os.kill(os.getpid(), signal.SIGTERM)

    assert pair_run(tmp_path / "cut", data, finetune, epochs=3, on_step=sigterm_at)["status"] == "interrupted"
    shutil.move(tmp_path / "source", tmp_path / "moved")  # the resume must not read the source
    assert pair_run(tmp_path / "cut", data, finetune, epochs=3)["status"] == "completed"
    assert_same_history(tmp_path / "whole", tmp_path / "cut")
    assert_same_latest_params(tmp_path / "whole", tmp_path / "cut")
    record = json.loads((tmp_path / "cut" / "model.json").read_text())["metadata"]["init_from"]
    assert record["path"] == str(tmp_path / "source")
    with pytest.raises(ConfigError, match=r"another config \(finetune.init_from: "):
        pair_run(tmp_path / "cut", data, {"init_from": str(tmp_path / "moved")}, epochs=3)


def test_an_ensemble_source_keeps_its_member_axis(data, physnet_source, tmp_path):
    from mmlwf.ensemble import member

    from .ensemble_fixtures import make_ensemble_run

    source = make_ensemble_run(physnet_source, tmp_path / "ensemble", size=2)
    config = source_config(load_config({"finetune": {"init_from": str(source)}, "ensemble": {"size": 2}}))
    model = build_model(config.model)
    fresh = [fresh_variables(model, data, k) for k in range(2)]
    out, _ = start_variables(model, config, element_energies(data), fresh)
    stacked = load_params(source, "best")[0]
    for k in range(2):
        for name, value in flat(out[k]).items():
            np.testing.assert_array_equal(value, flat(member(stacked, k))[name])
    assert not np.array_equal(flat(out[0])["embed/embedding"], flat(out[1])["embed/embedding"])
    single = source_config(load_config({"finetune": {"init_from": str(source)}}))
    with pytest.raises(ConfigError, match="the source has 2 member.*this run trains 1: fine-tune with ensemble.size 2"):
        start_variables(model, single, element_energies(data), fresh[:1])
