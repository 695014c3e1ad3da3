"""`--launcher ray` on a real Ray head (tools/ray_cluster.sh: `ray start --head` on loopback with
its own ports and temp dir), through the Jobs API. Marked `ray`: run by `python3 dev.py
tests_ray`, which installs ray[default] and starts the head; without it these tests fail.

Ray jobs run with the head's environment, not the submitter's: what a test job needs (fault
hooks, PYTHONPATH) goes through the `ray.env` option, as a user's settings would.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from .helpers import lfads
from .test_pbt_e2e import (
    assert_complete_population,
    members_of,
    parent_of,
    pbt_config,
    pbt_killed_at,
    project,
)

pytestmark = pytest.mark.ray
RUN_FILE = Path(os.environ.get("LFADS_RAY_RUN", Path.home() / ".cache" / "lfads-ray" / "run"))


def ray_address() -> str:
    path = RUN_FILE / "address"
    if not path.is_file():
        pytest.fail(f"no Ray head: {path} missing; run tools/ray_cluster.sh start")
    return path.read_text().strip()


def ray_options(**extra) -> dict:
    """A `ray:` section for the test head: this checkout's code (and `env`, e.g. LFADS_FAULTS)."""
    env = dict(extra.pop("env", {}))
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return {"address": ray_address(), "num_cpus": 0.5, "env": env, **extra}


def jobs_client():
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_address())


def jobs_of(parent: str, kind: str = "pbt_member") -> list:
    return [
        j
        for j in jobs_client().list_jobs()
        if (j.metadata or {}).get("pbt-run") == parent and (j.metadata or {}).get("kind") == kind
    ]


def members_so_far(uri: str) -> list:
    try:
        return members_of(uri)
    except Exception:  # the store or the experiment does not exist yet
        return []


def write_config(root: Path, config: dict, **ray) -> None:
    config["ray"] = ray_options(**ray)
    (root / "pbt.yaml").write_text(yaml.safe_dump(config))


def test_pbt_on_ray_finishes_with_the_local_layout(tmp_path, data_dir):
    root, uri = project(tmp_path, data_dir, {})
    write_config(root, pbt_config(population=4, generations=2, concurrency=4))
    t0 = time.monotonic()
    proc = lfads("pbt", "--launcher", "ray", "pbt.yaml", cwd=root)
    print(f"PBT 4 members x 2 generations on Ray: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_complete_population(uri, 4, 2, tmp_path)  # the same checks as the local launcher
    parent = parent_of(uri).info.run_id
    jobs = jobs_of(parent)
    members = members_of(uri)
    assert len(members) == 8 and len(jobs) == 8
    assert {j.metadata["run-id"] for j in jobs} == {r.info.run_id for r in members}
    assert all(j.status == "SUCCEEDED" for j in jobs)
    for r in members:
        job = json.loads(r.data.tags["lfads.job"])
        assert job["launcher"] == "ray" and job["address"] == ray_address()
    # the best member's posterior sampling ran as one more Ray job
    (final,) = jobs_of(parent, kind="pbt_final")
    assert final.status == "SUCCEEDED" and final.metadata["run-id"] == parent


def test_a_member_job_stopped_from_outside_is_retried(tmp_path, data_dir):
    """Member 1's first attempt hangs; someone stops its Ray job (`ray job stop`): the
    controller sees the job end without closing its run, retries it, and PBT finishes."""
    root, uri = project(tmp_path, data_dir, {})
    write_config(
        root,
        pbt_config(population=2, generations=1, concurrency=2),
        env={"LFADS_FAULTS": "member.start[member=1,attempt=0]=hang"},
    )
    import subprocess
    import sys

    controller = subprocess.Popen(
        [sys.executable, "-m", "lfads_lightning", "pbt", "--launcher", "ray", "pbt.yaml"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, stopped = time.monotonic() + 300, None
        while stopped is None:
            assert time.monotonic() < deadline and controller.poll() is None
            for r in members_so_far(uri):
                tags = r.data.tags
                if (
                    tags["lfads.member"] == "1"
                    and "lfads.heartbeat" in tags
                    and "lfads.job" in tags
                ):
                    stopped = json.loads(tags["lfads.job"])["job_id"]
            time.sleep(1)
        assert jobs_client().stop_job(stopped)  # from a client that did not submit it
        out, _ = controller.communicate(timeout=400)
    finally:
        if controller.poll() is None:
            controller.kill()
    assert controller.returncode == 0, out[-4000:]
    member1 = sorted(
        (r for r in members_of(uri) if r.data.tags["lfads.member"] == "1"),
        key=lambda r: int(r.data.tags["lfads.attempt"]),
    )
    # stop_job sends the worker SIGTERM: it closes its own run KILLED ("stopped by SIGTERM"), or,
    # had it not managed to, the controller FAILs it (job cancelled); either way it is retried.
    assert member1[0].info.status in ("KILLED", "FAILED") and member1[1].info.status == "FINISHED"
    error = member1[0].data.tags["lfads.error"]
    assert "SIGTERM" in error or "cancelled" in error, error
    assert jobs_client().get_job_status(stopped) == "STOPPED"


def test_killed_controller_resumes_and_adopts_running_jobs(tmp_path, data_dir):
    """SIGKILL right after generation 0 was submitted; `--resume` waits for those Ray jobs
    (found from the members' handles) instead of submitting them again."""
    root, uri = project(tmp_path, data_dir, {})
    write_config(root, pbt_config(population=4, generations=1, concurrency=4))
    pbt_killed_at("after_submit:0", "--launcher", "ray", "pbt.yaml", cwd=root)
    parent = parent_of(uri).info.run_id
    submitted = {j.submission_id for j in jobs_of(parent)}
    assert len(submitted) == 4
    resumed = lfads("pbt", "--resume", parent, cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "adopting" in resumed.stderr
    assert_complete_population(uri, 4, 1, tmp_path)
    assert {j.submission_id for j in jobs_of(parent)} == submitted  # no duplicate job


def test_a_population_moves_from_the_local_launcher_to_ray(tmp_path, data_dir):
    """Started on this machine's processes, killed after generation 0's decisions, resumed with
    `--launcher ray`: generation 1 runs as Ray jobs, the population is the same one."""
    root, uri = project(tmp_path, data_dir, {})
    write_config(root, pbt_config(population=2, generations=2, concurrency=2))
    pbt_killed_at("after_decisions:0", "--launcher", "local", "pbt.yaml", cwd=root)
    parent = parent_of(uri).info.run_id
    resumed = lfads("pbt", "--resume", parent, "--launcher", "ray", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_complete_population(uri, 2, 2, tmp_path)
    launchers = {
        (r.data.tags["lfads.generation"], json.loads(r.data.tags["lfads.job"])["launcher"])
        for r in members_of(uri)
    }
    assert launchers == {("0", "local"), ("1", "ray")}
    assert len(jobs_of(parent)) == 2


def test_bad_address_and_impossible_resources_fail_before_any_run(tmp_path, data_dir):
    root, _ = project(tmp_path, data_dir, pbt_config(population=2, generations=1))
    proc = lfads("pbt", "--launcher", "ray", "pbt.yaml", "ray.address=http://127.0.0.1:9", cwd=root)
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "no Ray Jobs API at http://127.0.0.1:9" in line and "ray.address" in line
    proc = lfads(
        "pbt", "--launcher", "ray", "pbt.yaml", f"ray.address={ray_address()}", "ray.num_cpus=64",
        cwd=root,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "largest node" in proc.stderr and "ray.num_cpus" in proc.stderr
    assert not (root / "mlflow.db").exists()


def test_a_local_store_with_a_remote_cluster_needs_a_tracking_server():
    from launchers import LauncherError, get_launcher

    launcher = get_launcher("ray", address=ray_address())
    # As if the cluster were elsewhere; the check refuses before contacting anything.
    launcher.address = "http://ray-head.lab.example:8265"
    with pytest.raises(LauncherError, match="tracking server"):
        launcher.check("sqlite:///mlflow.db")
