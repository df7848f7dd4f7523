"""The tiny workflow through a real SLURM (``--profile profiles/slurm``) equals a local run.

Needs a running cluster: ``.ci/slurm.sh start`` makes a one-node one on this machine
(``.ci/slurm_checks.sh`` starts it, runs ``pytest -m slurm`` and stops it). Skipped with the
reason when ``sinfo`` is missing or shows no idle node. The helpers here (cluster check, runs,
the local reference run, output comparison) are shared with tests/test_faults.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_workflow import SNAKEFILE, TINY, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
#: the profile as a user runs it, with status checks every few seconds instead of tens
SLURM_ARGS = ("--profile", str(PROFILE), "--workflow-profile", "none",
              "--slurm-init-seconds-before-status-checks", "2")
EXPERIMENT = "tiny"
#: TINY's demo dataset and its experiment 'tiny', with enough epochs that a training job can be
#: stopped half-way (about 0.3 s each: 'latest' is written every epoch, as a checkpoint interval
#: of 0 says; with the default minute between writes the 30 epochs take a second or two)
CONFIG = copy.deepcopy(TINY)
CONFIG["datasets"] = {"demo": CONFIG["datasets"]["demo"]}
CONFIG["experiments"] = {EXPERIMENT: CONFIG["experiments"][EXPERIMENT]}
CONFIG["experiments"][EXPERIMENT]["training"]["max_epochs"] = 30
CONFIG["experiments"][EXPERIMENT]["training"]["checkpoint_interval_min"] = 0
CONFIG["experiments"][EXPERIMENT]["threads"] = 1
HISTORY = f"results/runs/{EXPERIMENT}/history.csv"
DATA_TARGETS = ("results/datasets/demo/stats.json",)
TRAIN_TARGETS = (*DATA_TARGETS, HISTORY)
#: the snakemake log line naming each SLURM job it submitted
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


# ----------------------------------------------------------------------------- the cluster


def slurm_unavailable() -> str | None:
    """Why the cluster tests cannot run here, or None when a SLURM node is idle."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch) on PATH; start one with `.ci/slurm.sh start`"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    states = proc.stdout.split()
    if proc.returncode != 0 or not {"idle", "mixed"} & set(states[1::2]):
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"no idle SLURM node (sinfo: {last[0][:200]}); start one with `.ci/slurm.sh start`"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for all the runs of a module: the training jobs compile the
    same programs, which otherwise dominates their time on CPU (the numbers are the same)."""
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]


def run_local(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The workflow in ``workdir`` on this machine (2 cores, the workflow's default profile)."""
    return subprocess.run(snakemake_cmd(workdir, "--cores", "2", *args), capture_output=True, text=True,
                          timeout=timeout)


def run_slurm(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The workflow in ``workdir`` through SLURM with the repository's profile."""
    return subprocess.run(snakemake_cmd(workdir, *SLURM_ARGS, *args), capture_output=True, text=True,
                          timeout=timeout)


def start_slurm(workdir: Path, *args: str) -> subprocess.Popen:
    """As :func:`run_slurm`, in the background (its own process group); output in workdir/snakemake.out."""
    return start(workdir, *SLURM_ARGS, *args)


def start(workdir: Path, *args: str) -> subprocess.Popen:
    """snakemake in ``workdir`` in the background, in its own process group (so that a test can
    kill it with its jobs); stdout and stderr go to ``proc.out_path`` = workdir/snakemake.out."""
    out_path = workdir / "snakemake.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(snakemake_cmd(workdir, *args), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    proc.out_path = out_path
    return proc


def submitted_jobs(text: str) -> dict[str, tuple[str, Path]]:
    """{snakemake job id: (SLURM job id, SLURM log)} from a snakemake log."""
    return {m[1]: (m[2], Path(m[3])) for m in SUBMITTED.finditer(text)}


def slurm_job_state(job_id: str) -> str:
    """The job's state as the controller knows it (kept MinJobAge seconds after the end)."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, timeout=20)
    return proc.stdout.strip()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.2):
    """Poll ``predicate`` until it returns something true (returned); fail naming ``what``, with
    the end of ``proc``'s output, on timeout or when ``proc`` ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(poll)
    output = proc.out_path.read_text()[-3000:] if proc is not None else ""
    pytest.fail(f"no {what} after {timeout:.0f} s (or the run ended first)\n{output}")


def history_rows(workdir: Path, experiment: str = EXPERIMENT) -> int:
    path = workdir / f"results/runs/{experiment}/history.csv"
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


# ----------------------------------------------------------------------------- local reference

_REFERENCE: dict[str, Path] = {}


def reference_run(tmp_path_factory) -> Path:
    """CONFIG's data and training run locally and uninterrupted (once per session)."""
    if "dir" not in _REFERENCE:
        workdir = tmp_path_factory.mktemp("local-reference")
        write_config(workdir, CONFIG)
        proc = run_local(workdir, *TRAIN_TARGETS)
        assert proc.returncode == 0, proc.stderr[-4000:]
        _REFERENCE["dir"] = workdir
    return _REFERENCE["dir"]


def data_ready_copy(reference: Path, dest: Path) -> Path:
    """A workdir holding the reference's prepared dataset (demo data .. stats), no training."""
    ignore = shutil.ignore_patterns(".snakemake", "runs", "train", "snakemake.out")
    shutil.copytree(reference, dest, ignore=ignore, copy_function=shutil.copy2)
    return dest


def history_metrics(path: Path) -> pd.DataFrame:
    """history.csv without the columns that differ between equal runs (timings, compilations)."""
    from mmlwf.training.history import RUN_DEPENDENT_COLUMNS

    history = pd.read_csv(path)
    return history.drop(columns=[c for c in RUN_DEPENDENT_COLUMNS if c in history])


def assert_same_history(got: Path, expected: Path) -> None:
    pd.testing.assert_frame_equal(history_metrics(got), history_metrics(expected), check_exact=True)


def assert_same_data(got: Path, expected: Path, dataset: str = "demo") -> None:
    """Packed dataset (manifest checksums), split (bytes) and statistics equal."""
    root = f"results/datasets/{dataset}"
    man_got = json.loads((got / root / "packed/manifest.json").read_text())
    man_exp = json.loads((expected / root / "packed/manifest.json").read_text())
    assert man_got["n_molecules"] == man_exp["n_molecules"]
    assert {k: v.get("checksum") for k, v in man_got["fields"].items()} == \
           {k: v.get("checksum") for k, v in man_exp["fields"].items()}
    for name in ("split.npz", "stats.json"):
        assert hashlib.sha256((got / root / name).read_bytes()).hexdigest() == \
               hashlib.sha256((expected / root / name).read_bytes()).hexdigest(), name


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The whole tiny workflow (rule all) through SLURM, plus a GPU experiment: (workdir, process)."""
    workdir = tmp_path_factory.mktemp("slurm")
    config = copy.deepcopy(CONFIG)
    config["experiments"]["tiny_gpu"] = dict(copy.deepcopy(config["experiments"][EXPERIMENT]), device="gpu")
    config["experiments"]["tiny_gpu"]["training"]["max_epochs"] = 2
    write_config(workdir, config)
    return workdir, run_slurm(workdir)


def test_workflow_runs_every_job_as_a_slurm_job(slurm_run):
    workdir, proc = slurm_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (workdir / HISTORY).exists() and (workdir / "results/runs/tiny_gpu/history.csv").exists()
    jobs = submitted_jobs(out)
    planned = re.findall(r"^rule (\w+):", out, flags=re.M)
    remote = [r for r in planned if r != "all"]  # rule all is a localrule
    assert len(jobs) == len(remote) >= 7, out[-4000:]
    seen_rules = set()
    for slurm_id, log in jobs.values():
        # the job's own log: .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<SLURM job id>.log
        assert log.name == f"{slurm_id}.log" and log.is_relative_to(workdir / ".snakemake/slurm_logs"), log
        rule = next(part for part in log.parts if part.startswith("rule_")).removeprefix("rule_")
        text = log.read_text()
        assert f"rule {rule}:" in text and "Finished jobid: 0" in text, text[-2000:]
        assert slurm_job_state(slurm_id) == "COMPLETED"
        seen_rules.add(rule)
    assert seen_rules == set(remote)
    for rule in ("demo_data", "convert", "validate", "split", "stats", "train"):
        assert rule in seen_rules


def test_gpu_experiment_gets_a_gpu_from_slurm(slurm_run):
    workdir, proc = slurm_run
    jobs = submitted_jobs(proc.stdout + proc.stderr)
    ids = {log.parent.name: slurm_id for slurm_id, log in jobs.values() if "rule_train" in log.parts}
    shown = {e: subprocess.run(["scontrol", "show", "job", i], capture_output=True, text=True).stdout
             for e, i in ids.items()}
    assert "gpu" in shown["tiny_gpu"].split("TresPerJob=")[1].split()[0], shown["tiny_gpu"]
    assert "TresPerJob=" not in shown[EXPERIMENT]  # a cpu experiment asks for none


def test_slurm_outputs_equal_a_local_run(slurm_run, tmp_path_factory):
    workdir, proc = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference = reference_run(tmp_path_factory)
    assert_same_data(workdir, reference)
    assert_same_history(workdir / HISTORY, reference / HISTORY)
    model = json.loads((workdir / f"results/runs/{EXPERIMENT}/model.json").read_text())
    model_ref = json.loads((reference / f"results/runs/{EXPERIMENT}/model.json").read_text())
    assert model["model"] == model_ref["model"] and model["element_energies"] == model_ref["element_energies"]


def test_rerun_through_slurm_plans_nothing(slurm_run):
    workdir, proc = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = run_slurm(workdir, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_profile_sets_partition_account_and_resources_in_one_place():
    import yaml

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] == 0 and profile["rerun-incomplete"]
    assert profile["slurm-status-command"] == "squeue"
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb", "cpus_per_task"} <= set(profile["default-resources"])
    for rule in profile["set-resources"].values():
        assert not {"slurm_partition", "slurm_account"} & set(rule)
    assert "train" in profile["set-resources"]
