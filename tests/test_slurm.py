"""`--launcher slurm` end to end on the project's real single-node SLURM (tools/slurm_cluster.sh).

Nothing is mocked: members are real SLURM jobs (job arrays), states come from sacct, `scancel`
and `scontrol`/`scancel --signal` act on the real jobs, and the controller is really SIGKILLed.
These tests fail, not skip, when the cluster is down: `nox -s tests_slurm` starts it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from launchers import JobSpec, JobState, get_launcher
from lfads_lightning.runs import tracking

from .helpers import TINY_MODEL, lfads, member_run_config, member_tags
from .test_pbt_e2e import (
    assert_complete_population,
    assert_parent_outputs,
    members_of,
    parent_of,
    pbt_config,
    pbt_killed_at,
    wait_until_no_running,
)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    """The cluster must be up (idle node): a clear failure otherwise, not a skip."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.fail("sinfo not found: start the cluster with tools/slurm_cluster.sh start")
    states = out.stdout.split()
    assert (
        out.returncode == 0
        and states
        and states[0].rstrip("*~#$@+-") in ("idle", "mix", "alloc", "comp")
    ), (
        f"SLURM is not ready ({out.stdout.strip()} {out.stderr.strip()}): "
        "run tools/slurm_cluster.sh start (as root)"
    )


def project(tmp_path: Path, data_dir: Path, config: dict) -> str:
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    config = {**config, "slurm": {"time_min": 10, "job_name": "lfads-test"}}
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(config))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def sacct(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} for the allocations (not steps) of these jobs, as SLURM accounted them."""
    args = [a for j in sorted({j.split("_")[0] for j in job_ids}) for a in ("-j", j)]
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def members_so_far(uri: str) -> list:
    """The member runs, or none while the controller has not created the experiment yet."""
    client = MlflowClient(uri)
    if not Path(uri.removeprefix("sqlite:///")).exists() or not client.get_experiment_by_name(
        "pbt"
    ):
        return []
    return members_of(uri)


def queued(job_ids: list[str]) -> list[str]:
    """Those of the jobs SLURM still has pending or running (squeue: no accounting lag)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(set(out.split()) & set(job_ids))


def member_jobs(uri: str) -> list[str]:
    return [json.loads(r.data.tags["lfads.job"])["job_id"] for r in members_of(uri)]


def test_pbt_on_slurm_runs_every_member_as_a_slurm_job(tmp_path, data_dir):
    uri = project(tmp_path, data_dir, pbt_config(population=4, generations=2, concurrency=0))
    start = time.monotonic()
    proc = lfads(
        "pbt", "--launcher", "slurm", "pbt.yaml", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    print(f"PBT 4 members x 2 generations on SLURM: {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_complete_population(uri, 4, 2, tmp_path)  # the layout the local launcher makes
    assert_parent_outputs(uri)
    assert all(r.data.tags["lfads.launcher"] == "slurm" for r in members_of(uri))
    jobs = member_jobs(uri)
    assert len(jobs) == 8 and len(set(jobs)) == 8
    states = sacct(jobs)
    assert {j: states.get(j) for j in jobs} == {j: "COMPLETED" for j in jobs}
    # Each generation went out as one job array of 4 tasks.
    arrays = {j.split("_")[0] for j in jobs}
    assert len(arrays) == 2 and all("_" in j for j in jobs), jobs
    print("sacct:", states)


def test_scancel_of_a_running_member_is_retried(tmp_path, data_dir):
    uri = project(tmp_path, data_dir, pbt_config(population=4, generations=1, concurrency=0))
    env = {
        "MLFLOW_TRACKING_URI": uri,
        # sbatch exports the environment: attempt 0 of member 1 hangs
        "LFADS_FAULTS": "member.start[member=1,generation=0,attempt=0]=hang",
    }
    controller = subprocess.Popen(
        [sys.executable, "-m", "lfads_lightning", "pbt", "--launcher", "slurm", "pbt.yaml"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        job_id = None
        while job_id is None:  # member 1 really runs on SLURM (it beat once, then hangs)
            assert time.monotonic() < deadline and controller.poll() is None
            for r in members_so_far(uri):
                if r.data.tags.get("lfads.member") == "1" and "lfads.heartbeat" in r.data.tags:
                    job_id = json.loads(r.data.tags["lfads.job"])["job_id"]
            time.sleep(1)
        subprocess.run(["scancel", job_id], check=True)
        out, _ = controller.communicate(timeout=400)
    finally:
        if controller.poll() is None:
            controller.kill()
    assert controller.returncode == 0, out[-4000:]
    member1 = sorted(
        (r for r in members_of(uri) if r.data.tags["lfads.member"] == "1"),
        key=lambda r: int(r.data.tags["lfads.attempt"]),
    )
    # scancel sends the worker SIGTERM: it closes its own run KILLED ("stopped by SIGTERM"), or,
    # had it not managed to, the controller FAILs it (job cancelled); either way it is retried.
    assert member1[0].info.status in ("KILLED", "FAILED") and member1[1].info.status == "FINISHED"
    error = member1[0].data.tags["lfads.error"]
    assert "SIGTERM" in error or "cancelled" in error, error
    assert sacct([job_id])[job_id].startswith("CANCELLED")
    assert wait_until_no_running(uri, timeout=5) == []


def test_killed_controller_adopts_running_slurm_jobs(tmp_path, data_dir):
    uri = project(tmp_path, data_dir, pbt_config(population=4, generations=1, concurrency=0))
    env = {"MLFLOW_TRACKING_URI": uri}
    pbt_killed_at("after_submit:0", "--launcher", "slurm", "pbt.yaml", cwd=tmp_path, env=env)
    submitted = member_jobs(uri)
    assert len(submitted) == 4
    assert queued(submitted), "the jobs should outlive the killed controller"
    resumed = lfads("pbt", "--resume", parent_of(uri).info.run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "adopting" in resumed.stderr
    assert_complete_population(uri, 4, 1, tmp_path)
    # No duplicate submission: the same four SLURM jobs, one run per member.
    assert sorted(member_jobs(uri)) == sorted(submitted)
    assert set(sacct(submitted).values()) == {"COMPLETED"}


def test_fit_on_slurm(tmp_path, data_dir):
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {
        "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
        "model": TINY_MODEL,
        "train": {"max_epochs": 2, "progress_bar": False},
        "output": {"n_samples": 2, "figures": False},
        "tracking": {"experiment": "fit"},
        "slurm": {"time_min": 10},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    proc = lfads(
        "fit", "--launcher", "slurm", "fit.yaml", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fit").experiment_id])
    assert run.info.status == "FINISHED" and "posterior/valid_rate_r2" in run.data.metrics
    logs = list((tmp_path / "lfads_output" / "slurm").glob("*/*_log.out"))
    assert len(logs) == 1
    assert sacct([logs[0].parent.name]) == {logs[0].parent.name: "COMPLETED"}


def test_preempted_member_requeues_from_its_own_checkpoint(tmp_path, data_dir):
    """USR2 is what submitit gets before a time limit or (cluster setting) a preemption: the
    job saves the member's state to MLflow, requeues itself (same job id) and resumes there."""
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=150))
    launcher = get_launcher("slurm", time_min=30)
    handle = launcher.submit(JobSpec(run_id, uri, threads=1, log_dir=str(tmp_path / "logs")))
    client = MlflowClient(uri)
    deadline = time.monotonic() + 300
    while len(client.get_metric_history(run_id, "epoch_seconds")) < 3:  # a few epochs done
        assert time.monotonic() < deadline, "the job did not start training"
        assert not launcher.poll(handle).terminal
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR2", handle.job_id], check=True)
    assert launcher.wait(handle, poll_interval=1, timeout=600) == JobState.SUCCEEDED
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lfads.resumed_from"] == "own checkpoint (requeued job)"
    assert int(run.data.tags["lfads.interrupted_at_epoch"]) >= 2
    show = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--duplicates", "-o", "JobID,State", "-j", handle.job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "REQUEUED" in show and "COMPLETED" in show, show  # the same job id ran twice


def test_a_member_out_of_time_and_requeues_fails_with_the_reason(tmp_path, data_dir):
    """Time limit 1 min, USR2 20 s before it, no requeues left: the job fails and says why, so
    the controller closes the run FAILED with that reason and its failure rules (retry, then
    exploit) take over. (The launcher knows no MLflow: whoever waits on the job closes the run.)"""
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=100000))
    launcher = get_launcher("slurm", time_min=1, signal_delay_s=20, max_requeues=0)
    spec = JobSpec(run_id, uri, threads=1, log_dir=str(tmp_path / "logs"))
    handle = launcher.submit(spec)
    assert launcher.wait(handle, poll_interval=1, timeout=300) == JobState.FAILED
    assert "timed-out" in launcher.describe(handle)
    assert MlflowClient(uri).get_run(run_id).info.status != "FINISHED"


def test_a_partition_the_cluster_lacks_fails_before_any_run(tmp_path):
    proc = lfads("fit", "--launcher", "slurm", "slurm.partition=nope", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "invalid partition" in proc.stderr and "slurm.partition" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "lfads_output").exists()
