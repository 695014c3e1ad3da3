"""What the real kubelet enforces on the launcher's pods (tools/k8s/cluster.sh: containerd + runc).

The pod's own view is read from its log (the API server fetches it from the kubelet). Marked
`k8s`: run by `python3 dev.py tests_k8s`, which starts the cluster; without it these tests fail.
"""

from __future__ import annotations

import json
import time

import pytest

from launchers import JobSpec

from .helpers import lfads
from .k8s_helpers import WORKER_MEMORY, apis, host_ip, kube_options
from .mlflow_server import mlflow_server
from .test_kubernetes import JobRecorder, write_config
from .test_pbt_e2e import assert_complete_population, members_of, pbt_config, project

pytestmark = pytest.mark.k8s

# What the worker container sees of itself: uid/gid, a write to / and to /tmp, its capability,
# no-new-privileges and seccomp state, its memory limit, and our CLI in the image.
PROBE = "; ".join(
    [
        "echo uid=$(id -u) gid=$(id -g)",
        "touch /probe 2>&1 || true",
        "touch /tmp/probe && echo tmp=writable",
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
        "echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)",
        "lfads --help >/dev/null && echo lfads=ok",
    ]
)


@pytest.fixture
def server(tmp_path):
    with mlflow_server(tmp_path / "mlflow-server", host=host_ip()) as uri:
        yield uri


def _mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi")
    return int(quantity[:-2]) << 20


def test_worker_pod_is_non_root_on_a_read_only_root_without_capabilities(tmp_path):
    """The Job the launcher builds, run by the kubelet: uid and gid 1000, `/` read-only, /tmp (an
    emptyDir) writable, no capabilities, no new privileges, seccomp on, the memory limit set."""
    from launchers import JobState, get_launcher

    batch, core = apis()
    options = kube_options(command=["/bin/sh", "-c", PROBE, "sh"], delete_finished=False)
    launcher = get_launcher("kubernetes", **options)
    handle = launcher.submit(JobSpec("e" * 32, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    try:
        assert launcher.wait(handle, poll_interval=0.3, timeout=120) == JobState.SUCCEEDED
        name = handle.info["name"]
        (pod,) = core.list_namespaced_pod("default", label_selector=f"job-name={name}").items
        log = core.read_namespaced_pod_log(pod.metadata.name, "default")
    finally:
        batch.delete_namespaced_job(handle.info["name"], "default", propagation_policy="Background")
        launcher.close()
    lines = log.splitlines()
    assert "uid=1000 gid=1000" in lines, log
    assert any("/probe" in line and "Read-only file system" in line for line in lines), log
    assert "tmp=writable" in lines, log
    status = dict(line.split(":\t") for line in lines if ":\t" in line)
    assert status == {"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}, log
    assert f"limit={_mebibytes(WORKER_MEMORY)}" in lines, log
    assert "lfads=ok" in lines, log


def test_member_over_its_memory_limit_is_oomkilled_and_retried(tmp_path, data_dir, server):
    """Member 1's first attempt fills memory (fault `oom`) past the pod's limit: the kernel kills
    it, the kubelet reports OOMKilled, the Job fails; PBT records the attempt FAILED, retries it,
    and the population finishes. The `oom` fault is newer than the image the tests may be given:
    the pods run this checkout's package (`source=True`)."""
    root, _ = project(tmp_path, data_dir, {})
    faults = "member.start[member=1,generation=0,attempt=0]=oom"
    write_config(
        root, pbt_config(population=2, generations=1), data_dir, faults=faults, source=True
    )
    recorder = JobRecorder()
    proc = lfads("pbt", "--launcher", "kubernetes", "pbt.yaml", "--tracking-uri", server, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_complete_population(server, 2, 1, tmp_path)
    runs = {
        (int(r.data.tags["lfads.member"]), int(r.data.tags["lfads.attempt"])): r
        for r in members_of(server)
    }
    assert sorted(runs) == [(0, 0), (1, 0), (1, 1)]
    oom_run = runs[(1, 0)]
    assert oom_run.info.status == "FAILED"
    assert "job ended (failed)" in oom_run.data.tags["lfads.error"]
    oom_job = json.loads(oom_run.data.tags["lfads.job"])["name"]
    deadline = time.monotonic() + 30
    while oom_job not in recorder.terminated and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recorder.terminated.get(oom_job) == "OOMKilled", recorder.terminated
    others = {j for j in recorder.terminated if j != oom_job}
    assert others and all(recorder.terminated[j] == "Completed" for j in others)
