"""A tiny trained PhysNet run shared by the analysis tests (trained once per session).

Formaldehyde (B3LYP, ../shared/data) has energies, forces, dipoles and total charges, so a
model with ``charges: true`` exercises every PhysNet metric. Import the fixture into a test
module with ``from .analysis_fixtures import trained_run  # noqa: F401``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .conftest import shared_file

N_STRUCTURES, N_VALID, N_TEST = 90, 15, 25


@dataclass(frozen=True)
class TrainedRun:
    root: Path
    data: Path  # packed dataset
    split: Path
    run: Path  # run directory (2 epochs, EMA on, charges and dipoles)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    from mmlwf.cli import main
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    source = shared_file("h2co_b3lyp_4001.npz")
    root = tmp_path_factory.mktemp("analysis")
    with np.load(source, allow_pickle=False) as z:
        subset = {k: z[k][:N_STRUCTURES] for k in ("R", "Z", "N", "E", "F", "D", "Q")}
    np.savez(root / "h2co.npz", **subset)
    ds = convert([root / "h2co.npz"], root / "ds")
    split_dataset(ds, root / "split.npz", valid=N_VALID, test=N_TEST, seed=0)
    write_stats(compute_stats(ds, root / "split.npz"), root / "stats.json")
    run = root / "runs" / "tiny_physnet"
    code = main(["train", "--data", str(ds), "--split", str(root / "split.npz"), "--stats", str(root / "stats.json"),
                 "-o", str(run), "--set", "model.features=8", "--set", "model.num_iterations=1",
                 "--set", "model.num_basis_functions=8", "--set", "model.charges=true",
                 "--set", "training.batch_size=16", "--set", "training.max_epochs=2",
                 "--set", "training.ema_decay=0.5", "--set", "training.learning_rate=3e-3"])
    assert code == 0
    return TrainedRun(root, Path(ds), root / "split.npz", run)


K_E = 14.399645351950548  # eV Å / e²


def _esp_waters(path: Path, n: int, seed: int = 0):
    """Water conformers whose ESP (V) on points 1.3-3.5 Å from the molecule is that of known
    charges (O -0.8 shifted 0.2 Å towards the Hs, H +0.4), with the matching dipole (e·Å)."""
    from scipy.spatial.transform import Rotation

    from mmlwf.packed import PackedWriter
    from mmlwf.structure import Structure

    rng = np.random.default_rng(seed)
    with PackedWriter(path) as w:
        for i in range(n):
            r1, r2 = rng.uniform(0.9, 1.05, 2)
            th = np.deg2rad(rng.uniform(95, 115))
            R = np.array([[0, 0, 0], [r1, 0, 0], [r2 * np.cos(th), r2 * np.sin(th), 0]])
            R = Rotation.random(random_state=rng).apply(R) + rng.normal(0, 1, 3)
            mid = R[1:].mean(0) - R[0]
            pos = np.array([R[0] + 0.2 * mid / np.linalg.norm(mid), R[1], R[2]])
            q = np.array([-0.8, 0.4, 0.4])
            grid = []
            while len(grid) < 50:
                x = R.mean(0) + rng.normal(size=3) * rng.uniform(1.0, 2.5)
                if 1.3 < np.min(np.linalg.norm(R - x, axis=1)) < 3.5:
                    grid.append(x)
            grid = np.array(grid)
            esp = K_E * np.sum(q / np.linalg.norm(grid[:, None] - pos[None], axis=-1), axis=1)
            D = np.sum(q[:, None] * (pos - R.mean(0)), axis=0)
            w.add(Structure(Z=np.array([8, 1, 1]), R=R, E=0.0, Qtot=0.0, q=q, D=D, grid=grid, esp=esp,
                            index=i).checked("synthetic"))
    return path


N_ESP, N_ESP_VALID, N_ESP_TEST = 24, 6, 6


@pytest.fixture(scope="session")
def trained_dcmnet(tmp_path_factory) -> TrainedRun:
    """A tiny DCMNet run (2 epochs, EMA on) on synthetic water ESP data."""
    from mmlwf.cli import main
    from mmlwf.split import split_dataset

    root = tmp_path_factory.mktemp("analysis_dcm")
    ds = _esp_waters(root / "ds", N_ESP)
    split_dataset(ds, root / "split.npz", valid=N_ESP_VALID, test=N_ESP_TEST, seed=0)
    run = root / "runs" / "tiny_dcmnet"
    code = main(["train", "--data", str(ds), "--split", str(root / "split.npz"), "-o", str(run),
                 "--set", "model.type=dcmnet", "--set", "model.n_dcm=2", "--set", "model.features=8",
                 "--set", "model.num_iterations=1", "--set", "model.cutoff=3.0",
                 "--set", "training.batch_size=6", "--set", "training.max_epochs=2",
                 "--set", "training.ema_decay=0.5", "--set", "training.learning_rate=1e-2",
                 "--set", "training.esp_decay_length=1.0", "--set", "training.mono_weight=1.0"])
    assert code == 0
    return TrainedRun(root, Path(ds), root / "split.npz", run)


#: the multi-molecule fixture: GFN2-xTB conformers of three molecules (as the demo makes them)
MULTI_MOLECULES, N_MULTI_PER_MOLECULE = ("H2O", "NH3", "CH4"), 12


@pytest.fixture(scope="session")
def trained_multi(tmp_path_factory) -> TrainedRun:
    """A tiny PhysNet run (2 epochs, EMA on, charges) on a multi-molecule set labelled by
    GFN2-xTB (energies, forces, atomic charges, dipoles): ``mono`` (atomic charges) is in the
    data but has loss weight 0, and the model enforces the total charge."""
    from mmlwf.cli import main
    from mmlwf.demo import generate_demo_data

    root = tmp_path_factory.mktemp("analysis_multi")
    src = generate_demo_data(root / "demo.extxyz", molecules=MULTI_MOLECULES, n_per_molecule=N_MULTI_PER_MOLECULE,
                             seed=0, temperature_K=500.0, steps_between=5)
    assert main(["convert", str(src), "-o", str(root / "ds"), "--format", "extxyz"]) == 0
    assert main(["split", str(root / "ds"), "-o", str(root / "split.npz"), "--valid", "6", "--test", "9"]) == 0
    assert main(["stats", str(root / "ds"), "--split", str(root / "split.npz"), "-o", str(root / "stats.json")]) == 0
    run = root / "runs" / "multi"
    code = main(["train", "--data", str(root / "ds"), "--split", str(root / "split.npz"), "-o", str(run),
                 "--stats", str(root / "stats.json"),
                 "--set", "model.features=8", "--set", "model.num_iterations=1",
                 "--set", "model.num_basis_functions=8", "--set", "model.charges=true",
                 "--set", "training.batch_size=8", "--set", "training.max_epochs=2",
                 "--set", "training.ema_decay=0.5", "--set", "training.learning_rate=3e-3"])
    assert code == 0
    return TrainedRun(root, root / "ds", root / "split.npz", run)
