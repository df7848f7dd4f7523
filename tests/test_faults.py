"""The workflow under faults: killed training, interrupted conversion, a lost node, two trainings
at once. Local cases are ``slow``; SLURM cases are also ``slurm`` (they need ``.ci/slurm.sh start``).

Killed trainings must resume from their checkpoint and end with the history of an
uninterrupted run (CPU is deterministic): compared with ``test_slurm.reference_run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.test_slurm import (  # noqa: F401  (cluster, jax_compilation_cache: fixtures)
    CONFIG,
    EXPERIMENT,
    HISTORY,
    REPO,
    assert_same_history,
    cluster,
    data_ready_copy,
    history_rows,
    jax_compilation_cache,
    reference_run,
    run_local,
    run_slurm,
    start,
    start_slurm,
    submitted_jobs,
    wait_for,
)
from tests.test_workflow import write_config, write_extxyz

pytestmark = pytest.mark.slow

TRAIN_LOG = f"logs/train/{EXPERIMENT}.log"
CHECKPOINTS = f"results/runs/{EXPERIMENT}/checkpoints"
#: epochs a training has finished (and checkpointed) before it is killed, of CONFIG's 30
KILL_AFTER_EPOCHS = 3


def start_local(workdir: Path, *args: str) -> subprocess.Popen:
    """Local snakemake (2 cores) in the background, in its own process group."""
    return start(workdir, "--cores", "2", *args)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a background run; its output."""
    proc.wait(timeout=timeout)
    return proc.out_path.read_text()


def assert_resumed_to_reference(workdir: Path, rerun: subprocess.CompletedProcess, reference: Path) -> None:
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    log = (workdir / TRAIN_LOG).read_text()
    assert "resumed from checkpoint" in log, log[-3000:]
    assert "new run in" not in log
    assert_same_history(workdir / HISTORY, reference / HISTORY)
    assert "rule convert:" not in out and "rule stats:" not in out  # only the training re-ran


# ----------------------------------------------------------------------------- local


def test_killed_local_training_resumes_to_the_uninterrupted_result(tmp_path, tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    workdir = data_ready_copy(reference, tmp_path / "run")
    proc = start_local(workdir, HISTORY)
    try:
        wait_for(lambda: history_rows(workdir) >= KILL_AFTER_EPOCHS, 600, "epochs to finish", proc)
        trainer = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if any(part.endswith("train.py") for part in p.cmdline())]
        assert len(trainer) == 1, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        trainer[0].send_signal(signal.SIGKILL)  # no chance to write a last checkpoint
        out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "Error in rule train" in out, out[-3000:]
    assert history_rows(workdir) < CONFIG["experiments"][EXPERIMENT]["training"]["max_epochs"]
    assert not (workdir / HISTORY).exists()  # an incomplete output is removed ...
    assert (workdir / CHECKPOINTS).is_dir()  # ... the checkpoints stay

    rerun = run_local(workdir, HISTORY)
    assert_resumed_to_reference(workdir, rerun, reference)


N_BIG = 20_000  # structures: a conversion of several seconds


def test_interrupted_conversion_is_redone_and_never_used_half_written(tmp_path):
    write_extxyz(tmp_path / "big.extxyz", N_BIG)
    write_config(tmp_path, {"datasets": {"big": {"sources": ["big.extxyz"]}}, "experiments": {}})
    root = tmp_path / "results/datasets/big"
    target = "results/datasets/big/stats.json"
    proc = start_local(tmp_path, target)
    try:
        wait_for(lambda: root.is_dir() and list(root.glob(".packed.tmp-*")), 120, "the conversion to start",
                 proc, poll=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, mid-conversion
        proc.wait(timeout=30)
    assert not (root / "packed").exists()  # the writer renames its temporary directory only when complete
    assert not (root / "validation.json").exists() and not (root / "split.npz").exists()

    # a hard kill leaves snakemake's lock behind (as a power loss would): --unlock, then run again
    assert "Directory cannot be locked" in run_local(tmp_path, target).stderr
    assert run_local(tmp_path, "--unlock").returncode == 0
    rerun = run_local(tmp_path, target)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    assert "rule convert:" in out
    assert not list(root.glob(".*tmp*"))  # the killed writer's temporary directory is gone
    from mmlwf.validate import validate_dataset

    report = validate_dataset(root / "packed", check_checksums=True)
    assert report.ok and report.n_molecules == N_BIG
    manifest = json.loads((root / "packed/manifest.json").read_text())
    assert manifest["n_molecules"] == N_BIG
    assert json.loads((root / "validation.json").read_text())["ok"] is True


def _log_span(path: Path) -> tuple[datetime, datetime]:
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in path.read_text().splitlines()
              if line[:4].isdigit() and line[4:5] == "-"]
    return min(stamps), max(stamps)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts and p.name != "snakemake.out"}


def test_two_experiments_training_at_once_share_no_file(tmp_path, tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    workdir = data_ready_copy(reference, tmp_path / "run")
    config = json.loads(json.dumps(CONFIG))
    tiny = config["experiments"].pop(EXPERIMENT)
    tiny["training"]["max_epochs"] = 4
    config["experiments"] = {"exp_a": tiny, "exp_b": json.loads(json.dumps(tiny))}
    config["experiments"]["exp_b"]["training"]["seed"] = 1
    write_config(workdir, config)
    before = _files(workdir)
    targets = [f"results/runs/{e}/history.csv" for e in config["experiments"]]
    proc = run_local(workdir, *targets)  # 2 cores, each training 1 thread (CONFIG): both at once
    assert proc.returncode == 0, proc.stderr[-4000:]

    after = _files(workdir)
    written = {path for path, stat in after.items() if before.get(path) != stat}

    def owned_by(e: str, path: str) -> bool:
        return path.startswith(f"results/runs/{e}/") or path in (f"logs/train/{e}.log",
                                                                 f"results/benchmarks/train/{e}.tsv")

    per_job = {e: {p for p in written if owned_by(e, p)} for e in config["experiments"]}
    assert per_job["exp_a"] and per_job["exp_b"]
    assert not per_job["exp_a"] & per_job["exp_b"]
    assert written == per_job["exp_a"] | per_job["exp_b"], sorted(written - per_job["exp_a"] - per_job["exp_b"])
    for e, files in per_job.items():  # each wrote its own run directory, log and benchmark
        assert {f"results/runs/{e}/history.csv", f"results/runs/{e}/model.json", f"logs/train/{e}.log",
                f"results/benchmarks/train/{e}.tsv"} <= files
        assert any(p.startswith(f"results/runs/{e}/checkpoints/") for p in files)
    (a0, a1), (b0, b1) = (_log_span(workdir / f"logs/train/{e}.log") for e in ("exp_a", "exp_b"))
    assert a0 < b1 and b0 < a1, "the two trainings did not overlap in time"


# ----------------------------------------------------------------------------- SLURM


def _train_job(workdir: Path) -> str | None:
    """The SLURM job id of the training job, once snakemake has submitted it."""
    jobs = submitted_jobs((workdir / "snakemake.out").read_text())
    ids = [slurm_id for slurm_id, log in jobs.values() if "rule_train" in log.parts]
    return ids[-1] if ids else None


@pytest.mark.slurm
def test_scancel_mid_training_then_rerun_resumes_to_the_uninterrupted_result(cluster, tmp_path, tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    workdir = data_ready_copy(reference, tmp_path / "run")
    proc = start_slurm(workdir, HISTORY)
    try:
        job = wait_for(lambda: _train_job(workdir), 120, "the training job's submission", proc)
        wait_for(lambda: history_rows(workdir) >= KILL_AFTER_EPOCHS, 600, "epochs to finish", proc)
        subprocess.run(["scancel", job], check=True, timeout=30)  # SIGTERM: checkpoint, exit 75
        out = finish(proc, timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out[-3000:]
    assert "Error in rule train" in out and f"SLURM-job '{job}' failed" in out and "CANCELLED" in out, out[-3000:]
    assert (workdir / CHECKPOINTS).is_dir() and not (workdir / HISTORY).exists()
    assert "SIGTERM: stopped in epoch" in (workdir / TRAIN_LOG).read_text()

    rerun = run_slurm(workdir, HISTORY)
    assert_resumed_to_reference(workdir, rerun, reference)
    assert "submitted with SLURM jobid" in rerun.stdout + rerun.stderr


def _slurm_config(key: str) -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    return next(line.split("=", 1)[1].strip() for line in out.splitlines() if line.split("=")[0].strip() == key)


def _kill_node(job: str) -> None:
    """A node failure for ``job``: SIGKILL its slurmd, the job's slurmstepd and the job's processes."""
    pids = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=20).stdout
    job_pids = {int(line.split()[0]) for line in pids.splitlines()[1:] if line.split() and line.split()[0].isdigit()}
    assert job_pids, pids
    procs = [psutil.Process(p) for p in job_pids if psutil.pid_exists(p)]
    stepds = {p.parent() for p in procs if p.parent() is not None and p.parent().name() == "slurmstepd"}
    slurmd = int(Path(_slurm_config("SlurmdPidFile")).read_text())
    os.kill(slurmd, signal.SIGKILL)
    for p in [*stepds, *procs]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slurm
def test_node_failure_is_reported_and_a_rerun_after_restart_completes(cluster, tmp_path, tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    workdir = data_ready_copy(reference, tmp_path / "run")
    proc = start_slurm(workdir, HISTORY)
    try:
        job = wait_for(lambda: _train_job(workdir), 120, "the training job's submission", proc)
        wait_for(lambda: history_rows(workdir) >= KILL_AFTER_EPOCHS, 600, "epochs to finish", proc)
        _kill_node(job)
        out = finish(proc, timeout=300)  # the controller declares the node dead after SlurmdTimeout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        restart = subprocess.run([str(REPO / ".ci/slurm.sh"), "start"], capture_output=True, text=True, timeout=180)
    assert restart.returncode == 0, restart.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Error in rule train" in out and f"SLURM-job '{job}' failed due to a node failure" in out, out[-3000:]
    assert "NODE_FAIL" in out

    rerun = run_slurm(workdir, HISTORY)
    assert_resumed_to_reference(workdir, rerun, reference)
