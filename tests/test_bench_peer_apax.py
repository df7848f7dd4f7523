"""benchmarks/peer_apax.py without apax: the files apax trains on are mmlwf's split, and its
epochs are sized to the budget."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import _peer_apax as apax  # noqa: E402
from peer_apax import FILES, N_FRAMES, reference, write_frames, xyz_frames  # noqa: E402

from accuracy_rmd17 import DATA, prepare  # noqa: E402


def test_apax_trains_and_validates_on_mmlwfs_split(tmp_path):
    src = DATA / FILES["aspirin"][0]  # 1200 frames: the first 1000 are used
    if not src.exists():
        pytest.skip(f"needs {src}")
    from mmlwf.packed.reader import PackedDataset

    frames = xyz_frames(src)[:N_FRAMES]
    all_xyz = write_frames(frames, range(len(frames)), tmp_path / "frames.xyz")
    data = prepare(tmp_path, all_xyz, all_xyz)
    split = data["split"]
    assert (len(split.train), len(split.valid)) == (950, 50)
    ds = PackedDataset(data["train"])
    for part, name in ((split.train, "train"), (split.valid, "valid")):
        ref = reference(write_frames(frames, part, tmp_path / f"apax_{name}.xyz"))
        packed = np.concatenate([np.ravel(ds[int(i)]["E"]) for i in part])
        np.testing.assert_allclose(ref["E_ref"], packed, rtol=0, atol=1e-6)  # eV, the same structures in order
        np.testing.assert_allclose(ref["F_ref"], np.concatenate([ds[int(i)]["F"] for i in part]), atol=1e-5)


def test_apax_epochs_fit_the_budget_and_its_schedule_spans_them(tmp_path):
    calibration = {"wall_s": 40.0, "epoch_s": [20.0, 5.5, 4.5, 5.0]}  # 4 epochs: steady 5 s, fixed 40 - 20 s
    epochs, steady, fixed = apax.epochs_for(300.0, calibration, 4)
    assert (steady, fixed, epochs) == (5.0, 20.0, 56)  # 20 + 56 * 5 = 300 s
    assert apax.epochs_for(10.0, calibration, 4)[0] == 1  # a budget below the fixed cost: one epoch
    cfg = apax.apax_config(tmp_path / "t.xyz", tmp_path / "v.xyz", 950, 50, epochs, tmp_path)
    assert cfg["n_epochs"] == 56 and cfg["optimizer"]["schedule"]["name"] == "linear"  # decays over n_epochs
    assert (cfg["data"]["n_train"], cfg["data"]["n_valid"], cfg["data"]["valid_batch_size"]) == (950, 50, 50)
