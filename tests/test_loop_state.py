"""The training loop's host state (LoopState) against checkpoint metas written by the loop's
earlier dict, and the loader protocol the loop relies on.

The fixtures are the ``meta`` items of ``latest`` checkpoints written before LoopState
existed (tests/test_training.py's run: SIGTERM at epoch 2, batch 3; and a completed 2-epoch run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmlwf.training.loaders import Loader, PlannedLoader, epoch_batches, first_batch
from mmlwf.training.loop_state import META_VERSION, EpochSums, LoopState
from mmlwf.training.optim import Plateau

FIXTURES = Path(__file__).parent / "fixtures"


def _meta(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_mid_epoch_meta_reads_typed_and_writes_back_unchanged():
    meta = _meta("loop_meta_v1_mid_epoch.json")
    s = LoopState.from_meta(meta)
    assert (s.status, s.epoch, s.batch, s.step, s.devices) == ("interrupted", 1, 3, 10, 1)
    assert (s.best_epoch, s.best_loss) == (1, meta["best_loss"]) and s.epochs_since_best() == 0
    assert s.plateau == Plateau(factor=1.0, best=None, bad=0, cuts=0)
    assert s.acc.n == 3 and s.acc.loss_sum == meta["acc"]["loss_sum"] and s.acc.slots == 96
    assert s.acc.sums == meta["acc"]["sums"] and s.rng == meta["rng"]
    assert s.last_valid_loss() == meta["history"][-1]["valid_loss"]
    assert s.config == meta["config"] and s.meta_version == META_VERSION
    # written back: the same JSON, key order included
    again = s.to_meta()
    assert again == meta and list(again) == list(meta)
    assert json.dumps(again) == json.dumps(meta)


def test_epoch_end_meta_of_the_dict_loop_round_trips():
    # the dict loop wrote a fresh epoch's sums without the cost sums: they read as 0
    meta = _meta("loop_meta_v1_completed.json")
    assert meta["acc"] == {"loss_sum": 0.0, "n": 0, "sums": {}}
    s = LoopState.from_meta(meta)
    assert (s.status, s.epoch, s.batch) == ("completed", 2, 0) and len(s.history) == 2
    assert s.acc == EpochSums()
    again = s.to_meta()
    assert {k: v for k, v in again.items() if k != "acc"} == {k: v for k, v in meta.items() if k != "acc"}
    assert {k: again["acc"][k] for k in meta["acc"]} == meta["acc"]
    assert LoopState.from_meta(again) == s


def test_older_and_newer_metas():
    meta = _meta("loop_meta_v1_mid_epoch.json")
    # before data parallelism there was no 'devices': one device
    older = {k: v for k, v in meta.items() if k != "devices"}
    assert LoopState.from_meta(older).devices == 1
    # keys of a newer format are kept as they were
    newer = dict(meta, future_key={"x": 1})
    assert LoopState.from_meta(newer).to_meta()["future_key"] == {"x": 1}


def test_epoch_sums_add_a_step():
    acc = EpochSums()
    acc.add_step({"loss": np.float32(2.0), "ok": True, "grad_norm": 1.0, "energy_sse": np.float32(0.5)})
    acc.add_step({"loss": 4.0, "ok": True, "grad_norm": 2.0, "energy_sse": 1.5})
    assert (acc.n, acc.loss_sum, acc.mean_loss(), acc.sums) == (2, 6.0, 3.0, {"energy_sse": 2.0, "grad_norm": 3.0})
    assert acc.means() == {"train_loss": 3.0, "train_grad_norm": 1.5}
    assert EpochSums().mean_loss() is None
    # an epoch resumed from a checkpoint that did not sum the gradient norms: its mean is unknown
    old = EpochSums.from_dict({"loss_sum": 6.0, "n": 2, "sums": {"energy_sse": 2.0}})
    old.add_step({"loss": 1.0, "ok": True, "grad_norm": 2.0, "energy_sse": 1.0})
    assert old.means() == {"train_loss": 7.0 / 3, "train_grad_norm": None}
    assert EpochSums.from_dict(acc.to_dict()).means() == acc.means()


class _Plain:
    """A loader with only what every loader has (len and epoch)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int = 0):
        return iter(self.batches)


def test_loader_protocol(tmp_path):
    from mmlwf.batching import BatchLoader
    from mmlwf.packed import PackedWriter
    from mmlwf.structure import Structure

    with PackedWriter(tmp_path / "ds") as w:
        for i in range(6):
            w.add(Structure(Z=np.array([8, 1, 1]), R=np.array([[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0.1 * i]]),
                            E=-1.0, index=i).checked("m"))
    from mmlwf.packed import PackedDataset

    real = BatchLoader(PackedDataset(tmp_path / "ds"), batch_size=2, cutoff=2.0, shuffle=False, prefetch=0)
    assert isinstance(real, PlannedLoader) and isinstance(real, Loader)
    plain = _Plain([{"i": 0}, {"i": 1}, {"i": 2}])
    assert isinstance(plain, Loader) and not isinstance(plain, PlannedLoader)
    assert not isinstance(object(), Loader)
    # the rest of an epoch: a planned loader assembles only the batches after the start
    n, rest = epoch_batches(real, 0, 1)
    assert n == len(real) and [list(b["index"]) for b in rest] == [list(b["index"]) for b in list(real.epoch(0))[1:]]
    n, rest = epoch_batches(plain, 0, 2)
    assert n == 3 and list(rest) == [{"i": 2}]
    assert first_batch(plain) == {"i": 0}
    np.testing.assert_array_equal(first_batch(real)["index"], next(iter(real.epoch(0)))["index"])


@pytest.mark.parametrize("name", ["loop_meta_v1_mid_epoch.json", "loop_meta_v1_completed.json"])
def test_fixture_is_what_the_dict_loop_wrote(name):
    # the keys and their order of meta_version 1 (the dict loop's fresh_meta)
    assert list(_meta(name)) == ["meta_version", "status", "epoch", "batch", "step", "devices", "acc",
                                 "wall_time_s", "best_loss", "best_epoch", "plateau", "rng", "history", "config"]
