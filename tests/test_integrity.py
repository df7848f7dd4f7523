"""Data is verified before it is used: checksums against the manifest (train, evaluate), the
verification record, provenance of split/stats/model.json, and the workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmlwf import integrity
from mmlwf.cli import main
from mmlwf.errors import DataError
from mmlwf.packed import MARKER

from .analysis_fixtures import trained_run  # noqa: F401
from .conftest import shared_file

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.features=8", "--set", "model.num_iterations=1", "--set", "model.num_basis_functions=4",
        "--set", "training.batch_size=5", "--set", "training.max_epochs=1"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A converted dataset with its split and stats (never modified: tests copy it)."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    root = tmp_path_factory.mktemp("verified")
    with np.load(shared_file("h2co_b3lyp_4001.npz"), allow_pickle=False) as z:
        np.savez(root / "h2co.npz", **{k: z[k][:40] for k in ("R", "Z", "N", "E", "F")})
    ds = convert([root / "h2co.npz"], root / "ds")
    split_dataset(ds, root / "split.npz", valid=5, test=5, seed=0)
    write_stats(compute_stats(ds, root / "split.npz"), root / "stats.json")
    # another version of the same dataset (energies in other units): same size, other content
    convert([root / "h2co.npz"], root / "other", energy_unit="kcal/mol")
    split_dataset(root / "other", root / "other_split.npz", valid=5, test=5, seed=0)
    write_stats(compute_stats(root / "other", root / "other_split.npz"), root / "other_stats.json")
    return root


def copy_dataset(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made / "ds", tmp_path / "ds"))


def flip_byte(path: Path, at: int = 3) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x10]))


def train(made: Path, ds: Path, run: Path, split: str = "split.npz", stats: str = "stats.json") -> int:
    return main(["train", "--data", str(ds), "--split", str(made / split), "--stats", str(made / stats),
                 "-o", str(run), *TINY])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("name, field", [("E.f64", "E"), ("F_pack.f32", "F"), ("Z_pack.int32", "Z")])
def test_train_refuses_a_flipped_byte(made, tmp_path, capsys, name, field):
    ds = copy_dataset(made, tmp_path)
    flip_byte(ds / name)
    assert train(made, ds, tmp_path / "run") == 2
    err = one_error_line(capsys)
    assert f"{ds / name}: field '{field}'" in err and "SHA-256" in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_record_is_not_fooled_by_a_restored_mtime(made, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(integrity, "RACY_S", 0.01)
    ds = copy_dataset(made, tmp_path)
    time.sleep(0.05)  # older than RACY_S: the hashes are recorded
    first = integrity.verify_dataset(ds)
    assert first.verified and first.hashed > 0
    again = integrity.verify_dataset(ds)
    assert again.hashed == 0 and again.digest == first.digest  # recorded: nothing re-hashed
    target = ds / "E.f64"
    before = target.stat()
    flip_byte(target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime put back
    assert target.stat().st_mtime_ns == before.st_mtime_ns and target.stat().st_size == before.st_size
    with pytest.raises(DataError) as exc:
        integrity.verify_dataset(ds)
    assert exc.value.field == "E"
    assert train(made, ds, tmp_path / "run") == 2
    assert "field 'E'" in one_error_line(capsys)


def test_every_changed_field_is_named(made, tmp_path):
    ds = copy_dataset(made, tmp_path)
    flip_byte(ds / "E.f64")
    flip_byte(ds / "R_pack.f32")
    with pytest.raises(DataError) as exc:
        integrity.verify_dataset(ds)
    assert exc.value.field == "E" and "also: R" in str(exc.value)


def test_lost_checksums_and_lost_manifest_are_refused(made, tmp_path, capsys):
    ds = copy_dataset(made, tmp_path)
    manifest = json.loads((ds / "manifest.json").read_text())
    del manifest["fields"]["E"]["sha256"]
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert train(made, ds, tmp_path / "run") == 2
    err = one_error_line(capsys)
    assert "field 'E'" in err and "no checksum" in err
    (ds / "manifest.json").unlink()
    assert train(made, ds, tmp_path / "run") == 2
    assert MARKER in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_validate_cli_lost_manifest_is_an_error_legacy_a_warning(made, tmp_path, capsys):
    ds = copy_dataset(made, tmp_path)
    (ds / "manifest.json").unlink()
    assert main(["validate", str(ds)]) == 1
    captured = capsys.readouterr()
    assert "error [missing_file] field 'manifest'" in captured.err and "valid" not in captured.out
    (ds / MARKER).unlink()  # now indistinguishable from the users' legacy layout
    assert main(["validate", str(ds)]) == 0
    captured = capsys.readouterr()
    assert "warning [unverified]" in captured.out and "valid (40 structures, 1 warning(s))" in captured.out


def test_legacy_layout_is_accepted_unverified(tmp_path, caplog):
    script = REPO.parent / "shared" / "bench" / "make_synthetic_packed.py"
    if not script.exists():
        pytest.skip("../shared/bench/make_synthetic_packed.py not present")
    legacy = tmp_path / "legacy"
    subprocess.run([sys.executable, str(script), "50", str(legacy)], check=True, capture_output=True)
    with caplog.at_level("WARNING", logger="mmlwf.integrity"):
        v = integrity.verify_dataset(legacy)
    assert not v.verified and "not verified" in caplog.text
    # its digest is that of its content: a split of it records it, and a change is seen
    from mmlwf.split import split_dataset

    split_dataset(legacy, tmp_path / "split.npz", valid=5, test=5)
    integrity.check_split(tmp_path / "split.npz", v.digest, legacy)
    flip_byte(legacy / "E.f64")
    changed = integrity.verify_dataset(legacy)
    assert changed.digest != v.digest
    with pytest.raises(DataError, match="another version"):
        integrity.check_split(tmp_path / "split.npz", changed.digest, legacy)


# ----------------------------------------------------------------------------- provenance


def test_split_and_stats_record_the_digest(made):
    from mmlwf.split import load_split

    digest = integrity.dataset_digest(made / "ds")
    assert load_split(made / "split.npz").dataset_digest == digest
    assert json.loads((made / "stats.json").read_text())["dataset_digest"] == digest
    assert integrity.dataset_digest(made / "other") != digest
    marker = json.loads((made / "ds" / MARKER).read_text())
    assert marker["digest"] == digest


@pytest.mark.parametrize("split, stats, field", [("other_split.npz", "stats.json", "split"),
                                                 ("split.npz", "other_stats.json", "stats")])
def test_train_refuses_split_or_stats_of_another_version(made, tmp_path, capsys, split, stats, field):
    assert train(made, made / "ds", tmp_path / "run", split=split, stats=stats) == 2
    err = one_error_line(capsys)
    assert f"{made / (split if field == 'split' else stats)}: field 'dataset_digest'" in err
    assert f"mmlwf {field}' again" in err
    assert not (tmp_path / "run").exists()


def test_stats_refuses_a_split_of_another_version(made, tmp_path, capsys):
    assert main(["stats", str(made / "ds"), "--split", str(made / "other_split.npz"), "-o",
                 str(tmp_path / "s.json")]) == 2
    assert "another version" in one_error_line(capsys)
    assert not (tmp_path / "s.json").exists()


def test_model_json_and_evaluate_record_the_digest_and_evaluate_verifies(trained_run, tmp_path, capsys):  # noqa: F811
    digest = integrity.dataset_digest(trained_run.data)
    info = json.loads((trained_run.run / "model.json").read_text())
    assert info["metadata"]["dataset_digest"] == digest
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(trained_run.run), "--data", str(trained_run.data), "--split",
                 str(trained_run.split), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["dataset_digest"] == digest
    capsys.readouterr()
    ds = Path(shutil.copytree(trained_run.data, tmp_path / "ds"))
    flip_byte(ds / "E.f64")
    bad = tmp_path / "bad.json"
    assert main(["evaluate", str(trained_run.run), "--data", str(ds), "--split", str(trained_run.split),
                 "-o", str(bad)]) == 2
    assert "field 'E'" in one_error_line(capsys) and not bad.exists()
    # a split made from another version of the dataset
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset

    other = convert([trained_run.root / "h2co.npz"], tmp_path / "other", energy_unit="kcal/mol")
    split_dataset(other, tmp_path / "other_split.npz", valid=15, test=25)
    assert main(["evaluate", str(trained_run.run), "--data", str(trained_run.data), "--split",
                 str(tmp_path / "other_split.npz"), "-o", str(bad)]) == 2
    assert "field 'dataset_digest'" in one_error_line(capsys) and not bad.exists()


# ----------------------------------------------------------------------------- workflow


@pytest.mark.workflow
def test_workflow_catches_a_dataset_changed_in_place(tmp_path):
    from .test_workflow import TINY_MODEL, snakemake, write_config, write_extxyz

    write_extxyz(tmp_path / "water.extxyz", n=8)
    write_config(tmp_path, {
        "datasets": {"water": {"sources": ["water.extxyz"], "split": {"valid": 2, "test": 2}}},
        "experiments": {"tiny": {"dataset": "water", "model": TINY_MODEL,
                                 "training": {"batch_size": 2, "max_epochs": 1}}},
    })
    stats = "results/datasets/water/stats.json"
    first = snakemake(tmp_path, stats)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    energies = tmp_path / "results/datasets/water/packed/E.f64"
    before = energies.stat()
    flip_byte(energies)
    os.utime(energies, ns=(before.st_atime_ns, before.st_mtime_ns))  # changed in place, mtime put back
    run = snakemake(tmp_path, "results/runs/tiny/model.json")
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    assert "field 'E'" in out and "SHA-256" in out, out[-3000:]
    assert not (tmp_path / "results/runs/tiny/model.json").exists()
    assert not (tmp_path / "results/runs/tiny/history.csv").exists()
