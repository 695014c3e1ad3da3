"""Kubernetes Job manifests without a cluster: security defaults, labels, secret references,
option validation and `lfads pbt --dry-run`. The builder is a pure function returning a dict;
the same manifests are validated by the real API server in tests/test_kubernetes.py (k8s)."""

from __future__ import annotations

import pytest
import yaml

from launchers import JobSpec, LauncherError
from launchers.k8s_manifest import job_manifest, job_name, parse_options

from .helpers import lfads

LABELS = {
    "kind": "pbt_member",
    "member": "3",
    "generation": "12",
    "attempt": "1",
    "pbt-run": "0123456789abcdef0123456789abcdef",
}
RUN = "fedcba9876543210fedcba9876543210"
SPEC = JobSpec(RUN, "http://mlflow:5000", threads=2, labels=LABELS)


def build(**options):
    return job_manifest(parse_options(options), SPEC)


def test_security_defaults():
    job = build(gpus=1)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    res = c["resources"]
    assert set(res["limits"]) >= {"cpu", "memory"} and set(res["requests"]) >= {"cpu", "memory"}
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    # a read-only root filesystem still needs somewhere to write scratch files
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0


def test_labels_tie_the_job_to_run_member_and_generation():
    job = build(labels={"team": "neuro"})
    labels = job["metadata"]["labels"]
    assert labels["lfads.io/pbt-run"] == LABELS["pbt-run"]
    assert labels["lfads.io/member"] == "3" and labels["lfads.io/generation"] == "12"
    assert labels["lfads.io/run-id"] == RUN and labels["team"] == "neuro"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["metadata"]["name"] == job_name(SPEC) == "lfads-m03-g012-a1-fedcba987654"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["lfads"]
    assert c["args"] == ["worker", "--run-id", RUN, "--tracking-uri", "http://mlflow:5000"]
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in c["env"]


def test_credentials_only_as_secret_references():
    job = build(tracking_secret="mlflow-auth", secret_env={"AWS_SECRET_ACCESS_KEY": "s3/key"})
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "key"}
    with pytest.raises(LauncherError, match="secret_env"):
        build(env={"MLFLOW_TRACKING_PASSWORD": "hunter2"})


def test_options_are_all_rendered():
    job = build(
        namespace="lab",
        image="reg.example/lfads:gpu",
        image_pull_policy="Always",
        image_pull_secrets=["regcred"],
        cpu="2",
        memory="8Gi",
        memory_limit="10Gi",
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="lfads",
        volumes=[{"name": "data", "claim": "lfads-data", "mount_path": "/data", "read_only": True}],
        active_deadline_seconds=7200,
        ttl_seconds_after_finished=60,
        backoff_limit=1,
    )
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["metadata"]["namespace"] == "lab" and c["image"] == "reg.example/lfads:gpu"
    assert c["imagePullPolicy"] == "Always" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "10Gi"}
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "gpu"
    assert pod["serviceAccountName"] == "lfads" and pod["automountServiceAccountToken"] is True
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "lfads-data"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert spec["activeDeadlineSeconds"] == 7200 and spec["ttlSecondsAfterFinished"] == 60
    assert spec["backoffLimit"] == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"nmespace": "x"},
            "unknown config key 'kubernetes.nmespace'; valid keys: kubernetes.names",
        ),
        ({"run_as_user": 0}, "non-root"),
        ({"volumes": [{"name": "d", "mount_path": "/d"}]}, "one of claim"),
        ({"image_pull_policy": "Sometimes"}, "IfNotPresent"),
        ({"env": {"API_TOKEN": "x"}}, "credential"),
        ({"secret_env": {"X": "nokey"}}, "secret-name/key"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(LauncherError, match=message):
        parse_options(options)


def test_pbt_dry_run_prints_generation_zero(tmp_path):
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "pbt": {"population": 3},
                "kubernetes": {"namespace": "lab", "tracking_secret": "mlflow-auth"},
            }
        )
    )
    proc = lfads(
        "pbt", "--launcher", "kubernetes", "--dry-run", "c.yaml", "--tracking-uri",
        "http://mlflow.lab:5000", cwd=tmp_path, env={"KUBECONFIG": str(tmp_path / "none")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = list(yaml.safe_load_all(proc.stdout))
    assert [j["metadata"]["labels"]["lfads.io/member"] for j in jobs] == ["0", "1", "2"]
    assert all(j["metadata"]["namespace"] == "lab" for j in jobs)
    assert "http://mlflow.lab:5000" in jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "secretKeyRef" in proc.stdout and not list(tmp_path.glob("mlflow.db"))


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    proc = lfads(
        "pbt", "--launcher", "kubernetes", "pbt.population=2", cwd=tmp_path,
        env={"KUBECONFIG": str(tmp_path / "missing-kubeconfig")},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no kubeconfig at" in proc.stderr and "kubernetes.kubeconfig" in proc.stderr
