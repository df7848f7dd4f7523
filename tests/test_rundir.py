"""The run directory object, and runs and exports written by an older version (commit
3d8f1e4, before the registry and RunDir: tests/fixtures/make_old_run.py) still load."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlwf.errors import DataError
from mmlwf.rundir import RunDir, checkpoint_parameter_count

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def old(tmp_path):
    shutil.copytree(FIXTURES / "old_run", tmp_path / "old_run")
    shutil.copy(FIXTURES / "old_model.mmlwf", tmp_path / "old_model.mmlwf")
    with np.load(FIXTURES / "old_reference.npz") as z:
        ref = {k: z[k] for k in z.files}
    return tmp_path / "old_run", tmp_path / "old_model.mmlwf", ref


def test_file_names_and_errors(tmp_path):
    rd = RunDir(tmp_path / "r")
    assert rd.model_json == tmp_path / "r" / "model.json" and rd.checkpoint("latest") == tmp_path / "r/checkpoints/latest"
    assert rd.history_csv.name == "history.csv" and rd.train_log.name == "train.log"
    assert not rd.is_run() and not rd.has_checkpoint()
    with pytest.raises(DataError, match="no model.json"):
        rd.info
    (tmp_path / "r").mkdir()
    rd.model_json.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        RunDir(tmp_path / "r").info
    with pytest.raises(DataError, match="no history.csv"):
        rd.history_frame()
    assert checkpoint_parameter_count(tmp_path / "nowhere") is None


def test_old_run_reads_without_jax(old):
    run, _, _ = old
    code = ("import sys; from mmlwf.rundir import RunDir; r = RunDir(sys.argv[1]); "
            "assert r.model_type == 'physnet' and r.kind.name == 'physnet'; assert r.n_parameters() == 1047; "
            "assert [h['epoch'] for h in r.history_rows()] == [1]; assert len(r.history_frame()) == 1; "
            "from mmlwf.analysis.compare import compare_runs; t = compare_runs([r.path]); "
            "assert t['n_params'][0] == 1047 and t['features'][0] == 4; "
            "assert 'jax' not in sys.modules and 'orbax' not in sys.modules")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_old_run_and_export_load_and_predict_as_before(old, tmp_path):
    import jax
    from ase import Atoms

    from mmlwf.calculator import MMLWFCalculator
    from mmlwf.export import export_model, load_exported

    run, exported, ref = old
    rd = RunDir(run)
    trained = rd.load()
    assert type(trained.model).__name__ == "PhysNet" and trained.model.charges
    assert rd.n_parameters() == sum(np.size(x) for x in jax.tree_util.tree_leaves(load_params_raw(run)))
    assert load_exported(exported).model == trained.model
    export_model(run, tmp_path / "again.mmlwf")
    atoms = Atoms(numbers=ref["Z"], positions=ref["R"])
    for calc in (MMLWFCalculator.from_run(run), MMLWFCalculator.from_file(exported),
                 MMLWFCalculator.from_file(tmp_path / "again.mmlwf")):
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_potential_energy(), ref["energy"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(atoms.get_charges(), ref["charges"], rtol=0, atol=1e-6)


def load_params_raw(run):
    from mmlwf.training.checkpoint import load_params

    return load_params(run, "best", ema=False)[0]
