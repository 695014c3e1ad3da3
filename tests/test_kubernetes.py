"""`lfads pbt --launcher kubernetes` on a real one-node cluster (tools/k8s/cluster.sh).

Real API server, Job controller, scheduler and kubelet on containerd + runc: every worker is a
pod of our image, non-root on a read-only root with limits enforced. Workers report over the CNI
bridge to a real `mlflow server` bound to the bridge's gateway address; the data directory is a
read-only hostPath at its own path. Marked `k8s`: run by `python3 dev.py tests_k8s`, which starts
the cluster; without it these tests fail.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from launchers import JobSpec
from launchers.k8s_manifest import job_manifest, parse_options

from .helpers import lfads
from .k8s_helpers import apis, host_ip, kube_options
from .mlflow_server import mlflow_server
from .test_pbt_e2e import (
    assert_complete_population,
    members_of,
    parent_of,
    pbt_config,
    pbt_killed_at,
    project,
)

pytestmark = pytest.mark.k8s
MANAGED = "app.kubernetes.io/managed-by=lfads-lightning"


@pytest.fixture
def server(tmp_path):
    """A fresh MLflow server per test: experiment 'pbt' then holds only this test's PBT run."""
    with mlflow_server(tmp_path / "mlflow-server", host=host_ip()) as uri:
        yield uri


class JobRecorder:
    """Every lfads Job created while the test runs (name -> labels), from a watch on the API."""

    def __init__(self) -> None:
        from kubernetes import watch

        self.batch, self.core = apis()
        self.jobs: dict[str, dict[str, str]] = {}
        self.failed_pods: set[str] = set()
        self.terminated: dict[str, str] = {}  # job name -> its pod's container end reason
        self._watch = watch.Watch()
        start = self.batch.list_namespaced_job("default", label_selector=MANAGED)
        self._rv = start.metadata.resource_version
        threading.Thread(target=self._run, daemon=True).start()
        pods = self.core.list_namespaced_pod("default", label_selector=MANAGED)
        threading.Thread(
            target=self._run_pods, args=(pods.metadata.resource_version,), daemon=True
        ).start()

    def _run_pods(self, rv: str) -> None:
        from kubernetes import watch

        for ev in watch.Watch().stream(
            self.core.list_namespaced_pod, "default", label_selector=MANAGED,
            resource_version=rv, timeout_seconds=900,
        ):  # fmt: skip
            pod = ev["object"]
            for status in pod.status.container_statuses or []:
                if status.state.terminated is not None:
                    job = (pod.metadata.labels or {}).get("job-name", pod.metadata.name)
                    self.terminated[job] = status.state.terminated.reason

    def _run(self) -> None:
        for ev in self._watch.stream(
            self.batch.list_namespaced_job, "default", label_selector=MANAGED,
            resource_version=self._rv, timeout_seconds=900,
        ):  # fmt: skip
            job = ev["object"]
            self.jobs.setdefault(job.metadata.name, dict(job.metadata.labels or {}))
            if job.status.failed:
                self.failed_pods.add(job.metadata.name)

    def remaining(self, selector: str) -> tuple[list[str], list[str]]:
        jobs = self.batch.list_namespaced_job("default", label_selector=selector).items
        pods = self.core.list_namespaced_pod("default", label_selector=selector).items
        return [j.metadata.name for j in jobs], [p.metadata.name for p in pods]

    def wait_cleaned(self, selector: str, timeout: float = 60) -> tuple[list[str], list[str]]:
        deadline = time.monotonic() + timeout
        while (left := self.remaining(selector)) != ([], []) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


def write_config(root: Path, config: dict, data_dir: Path, **k8s) -> None:
    """The PBT config with a kubernetes section: data from the hostPath; outputs to an emptyDir
    at the same path as on this host (the pod's copy is gone with it; the MLflow artifact stays)."""
    out = root / "lfads_output"
    config["output"] = {**config.get("output", {}), "dir": str(out)}
    volume = {"name": "out", "empty_dir": True, "mount_path": str(out)}
    config["kubernetes"] = kube_options(data_dir=data_dir, volumes=[volume], **k8s)
    (root / "pbt.yaml").write_text(yaml.safe_dump(config))


def member_jobs(recorder: JobRecorder) -> dict[str, dict[str, str]]:
    return {n: j for n, j in recorder.jobs.items() if j.get("lfads.io/kind") == "pbt_member"}


def assert_every_member_was_a_job(uri: str, recorder: JobRecorder) -> None:
    parent = parent_of(uri).info.run_id
    by_run = {labels.get("lfads.io/run-id"): labels for labels in recorder.jobs.values()}
    for run in members_of(uri):
        tags = run.data.tags
        job = json.loads(tags["lfads.job"])
        assert job["launcher"] == "kubernetes" and job["namespace"] == "default"
        labels = by_run[run.info.run_id]
        assert labels["lfads.io/pbt-run"] == parent
        assert labels["lfads.io/member"] == tags["lfads.member"]
        assert labels["lfads.io/generation"] == tags["lfads.generation"]
        assert labels["lfads.io/attempt"] == tags["lfads.attempt"]


def test_pbt_on_kubernetes_finishes_with_the_local_layout(tmp_path, data_dir, server):
    root, _ = project(tmp_path, data_dir, {})
    write_config(root, pbt_config(population=4, generations=2), data_dir)
    recorder = JobRecorder()
    t0 = time.monotonic()
    proc = lfads("pbt", "--launcher", "kubernetes", "pbt.yaml", "--tracking-uri", server, cwd=root)
    print(f"PBT 4 members x 2 generations on Kubernetes: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_complete_population(server, 4, 2, tmp_path)  # the same checks as the local launcher
    client = MlflowClient(server)
    parent = parent_of(server)
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "outputs")] == [
        "outputs/lfads_output_tiny.h5"
    ]
    assert len(members_of(server)) == 8 and len(member_jobs(recorder)) == 8
    assert_every_member_was_a_job(server, recorder)
    # the best member's posterior sampling ran as one more Job of the same launcher
    (final,) = [j for j in recorder.jobs.values() if j.get("lfads.io/kind") == "pbt_final"]
    assert final["lfads.io/run-id"] == parent.info.run_id
    left = recorder.wait_cleaned(f"lfads.io/pbt-run={parent.info.run_id}")
    assert left == ([], []), f"Jobs/pods left behind: {left}"


def test_failing_pod_and_job_deleted_from_outside_are_survived(tmp_path, data_dir, server):
    """Member 1's first pod exits 3 (Job Failed); member 0's first Job hangs and is deleted
    with kubectl-like Background propagation by someone else. Both are retried and finish."""
    root, _ = project(tmp_path, data_dir, {})
    faults = (
        "member.start[member=0,generation=0,attempt=0]=hang;"
        "member.start[member=1,generation=0,attempt=0]=exit"
    )
    write_config(
        root,
        pbt_config(population=2, generations=2, heartbeat_timeout=120.0),
        data_dir,
        faults=faults,
    )
    recorder = JobRecorder()
    holder: dict = {}

    def delete_the_hanging_job() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for name, labels in list(recorder.jobs.items()):
                if labels.get("lfads.io/member") == "0" and labels.get("lfads.io/attempt") == "0":
                    run = MlflowClient(server).get_run(labels["lfads.io/run-id"])
                    if "lfads.heartbeat" in run.data.tags:  # the pod's worker really runs
                        time.sleep(1)
                        recorder.batch.delete_namespaced_job(
                            name, "default", propagation_policy="Background"
                        )
                        holder["deleted"] = name
                        return
            time.sleep(0.5)

    deleter = threading.Thread(target=delete_the_hanging_job, daemon=True)
    deleter.start()
    proc = lfads("pbt", "--launcher", "kubernetes", "pbt.yaml", "--tracking-uri", server, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deleted" in holder, "the hanging member's Job was never seen running"
    assert_complete_population(server, 2, 2, tmp_path)
    gen0 = {
        (int(r.data.tags["lfads.member"]), int(r.data.tags["lfads.attempt"])): r
        for r in members_of(server)
        if r.data.tags["lfads.generation"] == "0"
    }
    # The deleted Job's pod got SIGTERM: its worker closed the run KILLED itself (or, had it
    # not managed to, the controller FAILED it); either way the attempt was retried.
    assert gen0[(0, 0)].info.status in ("KILLED", "FAILED")
    assert gen0[(0, 1)].info.status == "FINISHED"
    assert gen0[(1, 0)].info.status == "FAILED" and gen0[(1, 1)].info.status == "FINISHED"
    assert "job ended (failed)" in gen0[(1, 0)].data.tags["lfads.error"]
    failed_job = json.loads(gen0[(1, 0)].data.tags["lfads.job"])["name"]
    assert failed_job in recorder.failed_pods  # the Job controller counted a failed pod
    assert_every_member_was_a_job(server, recorder)
    parent = parent_of(server).info.run_id
    assert recorder.wait_cleaned(f"lfads.io/pbt-run={parent}") == ([], [])


def test_killed_controller_resumes_and_adopts_running_jobs(tmp_path, data_dir, server):
    """The controller is SIGKILLed right after submitting generation 0; `lfads pbt --resume`
    finds the four Jobs through the members' `lfads.job` tags and waits for them: no
    duplicate Job, the population finishes, nothing is left in the cluster."""
    root, _ = project(tmp_path, data_dir, {})
    write_config(root, pbt_config(population=4, generations=1, concurrency=0), data_dir)
    recorder = JobRecorder()
    pbt_killed_at(
        "after_submit:0", "--launcher", "kubernetes", "pbt.yaml", "--tracking-uri", server, cwd=root
    )
    parent = parent_of(server).info.run_id
    submitted = {json.loads(r.data.tags["lfads.job"])["name"] for r in members_of(server)}
    assert len(submitted) == 4
    jobs, _ = recorder.remaining(f"lfads.io/pbt-run={parent}")
    assert set(jobs) == submitted, "the Jobs should outlive the killed controller"
    resumed = lfads("pbt", "--resume", parent, "--tracking-uri", server, cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "adopting" in resumed.stderr
    assert_complete_population(server, 4, 1, tmp_path)
    assert len(members_of(server)) == 4 and set(member_jobs(recorder)) == submitted  # no duplicates
    assert_every_member_was_a_job(server, recorder)
    assert recorder.wait_cleaned(f"lfads.io/pbt-run={parent}") == ([], [])


def test_manifests_pass_server_side_dry_run(tmp_path):
    """The API server validates (and defaults) the manifests without persisting them."""
    batch, _ = apis()
    options = kube_options(
        gpus=1,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        volumes=[
            {"name": "data", "claim": "lfads-data", "mount_path": "/data", "read_only": True},
            {"name": "out", "empty_dir": True, "mount_path": "/out"},
        ],
        image_pull_secrets=["regcred"],
        service_account="lfads-worker",
        tracking_secret="mlflow-auth",
        secret_env={"AWS_SECRET_ACCESS_KEY": "s3-credentials/secret"},
        active_deadline_seconds=3600,
    )
    labels = {"member": "0", "generation": "0", "pbt-run": "a" * 32}
    spec = JobSpec("b" * 32, "http://mlflow:5000", threads=1, labels=labels)
    manifest = job_manifest(parse_options(options), spec)
    created = batch.create_namespaced_job("default", manifest, dry_run="All")
    sc = created.spec.template.spec.containers[0].security_context
    assert sc.run_as_non_root and not sc.allow_privilege_escalation
    assert sc.capabilities.drop == ["ALL"] and sc.read_only_root_filesystem
    assert (
        batch.list_namespaced_job("default", label_selector="lfads.io/run-id=" + "b" * 32).items
        == []
    )
    # the CLI's --dry-run output is valid too
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump({"pbt": {"population": 2}, "kubernetes": options})
    )
    proc = lfads("pbt", "--launcher", "kubernetes", "--dry-run", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for doc in yaml.safe_load_all(proc.stdout):
        batch.create_namespaced_job("default", doc, dry_run="All")
    # and the server really validates: a bad label value is rejected
    from kubernetes.client import ApiException

    manifest["metadata"]["labels"]["lfads.io/member"] = "not a label!"
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job("default", manifest, dry_run="All")
    assert err.value.status == 422


def test_a_new_launcher_adopts_a_job_from_its_recorded_handle(tmp_path):
    """After a controller restart only the member's `lfads.job` tag is left: a new launcher
    polls and cancels the Job from it; closing the first launcher left the running Job alone."""
    from launchers import JobHandle, JobState, get_launcher

    # A shell as PID 1 ignores SIGTERM unless it traps it; untrapped, the pod would outlive its
    # deletion by the whole 30 s grace period (CI saw > 55 s with the garbage collector's lag).
    sleeper = kube_options(command=["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait", "sh"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = get_launcher("kubernetes", **sleeper)
    handle = first.submit(JobSpec("c" * 32, uri))
    stored = json.loads(json.dumps({"job_id": handle.job_id, **handle.info}))
    first.close()
    second = get_launcher("kubernetes", **sleeper)
    adopted = JobHandle("kubernetes", stored.pop("job_id"), "c" * 32, stored)
    deadline = time.monotonic() + 60
    while (state := second.poll(adopted)) != JobState.RUNNING:
        assert state == JobState.PENDING and time.monotonic() < deadline
        time.sleep(0.3)
    second.cancel(adopted)
    assert second.poll(adopted) == JobState.CANCELLED
    recorder_batch, core = apis()
    selector = "lfads.io/run-id=" + "c" * 32
    deadline = time.monotonic() + 90
    while core.list_namespaced_pod("default", label_selector=selector).items:
        assert time.monotonic() < deadline, "the cancelled Job's pod was not removed"
        time.sleep(0.5)
    assert recorder_batch.list_namespaced_job("default", label_selector=selector).items == []
    second.close()


def test_tracking_credentials_reach_the_pod_only_through_the_secret(tmp_path):
    """The Job holds a secretKeyRef, never the value; the pod's process gets the value."""
    import base64

    from launchers import JobState, get_launcher

    batch, core = apis()
    name = "lfads-test-mlflow-auth"
    core.delete_collection_namespaced_secret("default", field_selector=f"metadata.name={name}")
    data = {"username": "alice", "password": "s3cret-value"}
    core.create_namespaced_secret(
        "default",
        {
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
    )
    check = 'test "$MLFLOW_TRACKING_USERNAME" = alice && test "$MLFLOW_TRACKING_PASSWORD" = s3cret-value'
    launcher = get_launcher(
        "kubernetes", **kube_options(command=["/bin/sh", "-c", check, "sh"], tracking_secret=name)
    )
    handle = launcher.submit(JobSpec("d" * 32, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    job = batch.read_namespaced_job(handle.info["name"], "default")
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[var].value is None and env[var].value_from.secret_key_ref.name == name
    assert launcher.wait(handle, poll_interval=0.3, timeout=60) == JobState.SUCCEEDED
    launcher.close()
    core.delete_namespaced_secret(name, "default")
