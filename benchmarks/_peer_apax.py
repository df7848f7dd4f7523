"""The apax side of ``benchmarks/peer_apax.py``: its own virtual environment, its config, its
training within a wall-clock budget and its test predictions.

apax (GMNN, JAX; needs TensorFlow for its data pipeline) is no dependency of this project: it is
installed with pip into a virtual environment of its own on first use. Everything apax runs is a
subprocess of that environment's Python (``apax train``; the predictions through its ASE
calculator), so its packages never meet ours.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

APAX_VERSION = "0.14.0"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmlwf-bench" / \
    f"apax-{APAX_VERSION}-venv"
#: epochs of the short run that measures apax's epoch time and start-up cost
CALIBRATION_EPOCHS = 3

#: run inside the venv: energies (eV) and forces (eV/Å) of every frame of argv[2] by the best
#: checkpoint of the model directory argv[1], written to argv[3] (npz)
PREDICT = """
import sys, numpy as np, ase.io
from apax.md import ASECalculator
frames = ase.io.read(sys.argv[2], ":")
out = ASECalculator(model_dir=sys.argv[1]).batch_eval(frames, batch_size=100, silent=True)
np.savez(sys.argv[3], E=np.array([a.get_potential_energy() for a in out]),
         F=np.concatenate([a.get_forces() for a in out]))
"""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> dict:
    """Create ``venv`` with ``apax==APAX_VERSION`` unless it has it already; return the versions
    of apax and the packages that decide its speed."""
    py = venv_python(venv)
    probe = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
             "('apax', 'jax', 'jaxlib', 'flax', 'tensorflow', 'numpy')}))")
    ok = py.exists() and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0
    if not ok:
        print(f"installing apax {APAX_VERSION} into {venv} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", f"apax=={APAX_VERSION}"], check=True)
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True)
    versions = json.loads(out.stdout)
    if versions["apax"] != APAX_VERSION:
        raise SystemExit(f"{venv}: has apax {versions['apax']}, not {APAX_VERSION}; remove it or pass --apax-venv")
    return versions


def apax_config(train_xyz: Path, valid_xyz: Path, n_train: int, n_valid: int, n_epochs: int, directory: Path,
                seed: int = 0) -> dict:
    """apax's documented settings: ``apax template train --full`` of 0.14.0 as the model-training
    tutorial fills it in (batch size 4, GMNN with 16 Bessel functions to 5 Å, 5 radial and 8
    contracted features, a [256, 256] readout, energy + 4 x forces MSE loss, Adam with its
    per-group learning rates), with apax's default schedule, a linear decay to 1e-6 over all
    ``n_epochs`` (the template's cyclic cosine restarts every 40 epochs, a schedule for runs
    much longer than a CPU budget allows)."""
    return {
        "n_epochs": n_epochs, "seed": seed, "ckpt_interval": 500, "patience": None, "data_parallel": True,
        "weight_average": None,
        "data": {
            "directory": str(directory), "experiment": "apax",
            "train_data_path": str(train_xyz), "val_data_path": str(valid_xyz),
            "dataset": {"processing": "cached", "shuffle_buffer_size": 1000},
            "n_train": n_train, "n_valid": n_valid, "batch_size": 4, "valid_batch_size": min(100, n_valid),
            "shift_method": "per_element_regression_shift", "shift_options": {"energy_regularisation": 1.0},
            "scale_method": "per_element_force_rms_scale", "scale_options": {},
            "pos_unit": "Ang", "energy_unit": "eV",
        },
        "model": {
            "name": "gmnn", "basis": {"name": "bessel", "n_basis": 16, "r_max": 5.0}, "ensemble": None,
            "n_radial": 5, "n_contr": 8, "nn": [256, 256], "calc_stress": False,
            "w_init": "lecun", "b_init": "zeros", "descriptor_dtype": "fp32", "readout_dtype": "fp32",
            "scale_shift_dtype": "fp64", "emb_init": "uniform", "use_ntk": False,
        },
        "loss": [{"name": "energy", "loss_type": "mse", "weight": 1.0, "atoms_exponent": 1},
                 {"name": "forces", "loss_type": "mse", "weight": 4.0, "atoms_exponent": 1}],
        "metrics": [{"name": "energy", "reductions": ["mae"]}, {"name": "forces", "reductions": ["mae", "mse"]}],
        "optimizer": {"name": "adam", "kwargs": {}, "emb_lr": 0.001, "nn_lr": 0.001, "scale_lr": 0.0001,
                      "shift_lr": 0.003, "zbl_lr": 0.0001,
                      "schedule": {"name": "linear", "transition_begin": 0, "end_value": 1e-6}},
        "callbacks": [{"name": "csv"}],
        "progress_bar": {"disable_epoch_pbar": True, "disable_batch_pbar": True},
    }


def train(venv: Path, config: dict, work: Path) -> dict:
    """``apax train`` of ``config`` (written to ``work/config.yaml``); returns its wall seconds
    and the epoch times of its ``log.csv`` (seconds, validation included)."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = work / "apax_train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run([venv / "bin" / "apax", "train", str(cfg_path)], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"apax train failed (exit {rc}); its log {log_path}:\n" + log_path.read_text()[-3000:])
    model_dir = Path(config["data"]["directory"]) / config["data"]["experiment"]
    with open(model_dir / "log.csv", newline="") as fh:
        epoch_s = [float(row["epoch_time"]) for row in csv.DictReader(fh)]
    return {"wall_s": wall, "epoch_s": epoch_s, "model_dir": model_dir}


def epochs_for(budget_s: float, calibration: dict, n_epochs_calibration: int) -> tuple[int, float, float]:
    """Epochs that fit ``budget_s`` of ``apax train`` wall time, from a calibration run: the
    steady epoch time (median of its epochs after the first) and the rest of its wall time
    (start-up, first-epoch compilation and neighbour lists) as a fixed cost. Returns
    ``(epochs, steady epoch s, fixed s)``; one epoch at least."""
    steady = statistics.median(calibration["epoch_s"][1:])
    fixed = calibration["wall_s"] - n_epochs_calibration * steady
    return max(1, int((budget_s - fixed) // steady)), steady, fixed


def predict(venv: Path, model_dir: Path, frames_xyz: Path, out: Path) -> dict:
    """Energies (eV) and forces (eV/Å) of every frame of ``frames_xyz`` by apax's best checkpoint."""
    import numpy as np

    done = subprocess.run([venv_python(venv), "-c", PREDICT, str(model_dir), str(frames_xyz), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"apax prediction failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with np.load(out, allow_pickle=False) as z:
        return {"E": z["E"], "F": z["F"]}
