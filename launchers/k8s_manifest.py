"""Kubernetes Job manifests for worker jobs: options, validation and a pure builder.

Kept apart from the API client (launchers/kubernetes.py) so the manifest, with its security
defaults, can be built, printed (`lfads pbt --dry-run`) and unit-tested without a cluster or the
`kubernetes` package.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from launchers.errors import LauncherError
from launchers.spec import THREAD_VARS, JobSpec
from launchers.typed_options import launcher_section

LABEL_PREFIX = "lfads.io/"
# The spec's labels that become Job labels (lfads.io/<name>), in this order.
SPEC_LABELS = ("pbt-run", "kind", "member", "generation", "attempt")
# Tracking credentials come only from a Secret: MLflow's env var <- key in `tracking_secret`.
TRACKING_SECRET_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "username",
    "MLFLOW_TRACKING_PASSWORD": "password",
    "MLFLOW_TRACKING_TOKEN": "token",
}
_SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|ACCESS_KEY|API_KEY", re.IGNORECASE)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass
class KubernetesOptions:
    """The `kubernetes:` config section. Mapping-valued keys are checked in `parse_options`."""

    namespace: str = "default"
    image: str = "lfads-lightning:cpu"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    # The container's command; the image's entrypoint is `lfads`. Tests running pods as local
    # processes set it to the venv's interpreter: [/path/python, -m, lfads_lightning].
    command: list[str] = field(default_factory=lambda: ["lfads"])
    cpu: str = "1"
    memory: str = "4Gi"
    cpu_limit: str | None = None  # default: the request
    memory_limit: str | None = None  # default: the request
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    service_account: str | None = None
    run_as_user: int = 1000
    read_only_root_filesystem: bool = True
    working_dir: str | None = None
    backoff_limit: int = 0  # the PBT controller retries a member itself (pbt.retries)
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 3600
    delete_finished: bool = True  # delete a Job once poll saw it end
    tracking_secret: str | None = None  # Secret with keys username/password or token
    tracking_uri: str | None = None  # the URI pods use, if not the controller's
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool | None = None  # None: in-cluster config when running in a pod
    # Mappings / lists of mappings (validated by parse_options):
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)  # VAR: "secret-name/key"
    volumes: list[dict[str, Any]] = field(default_factory=list)


_MAPPINGS = ("node_selector", "labels", "env", "secret_env")
_MAPPING_LISTS = ("tolerations", "volumes")
_VOLUME_KEYS = ("name", "mount_path", "claim", "empty_dir", "host_path", "read_only", "sub_path")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")


def parse_options(options: dict[str, Any] | None) -> KubernetesOptions:
    """Validate the `kubernetes:` section; unknown keys and bad values raise LauncherError."""
    options = dict(options or {})
    special = {k: options.pop(k) for k in (*_MAPPINGS, *_MAPPING_LISTS) if k in options}
    names = [f.name for f in dataclasses.fields(KubernetesOptions)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise LauncherError(
            f"unknown config key 'kubernetes.{unknown[0]}'; valid keys: "
            + ", ".join(f"kubernetes.{n}" for n in names)
        )
    opts = launcher_section(KubernetesOptions, options, "kubernetes.")
    for key in _MAPPINGS:
        value = special.get(key) or {}
        if not isinstance(value, dict):
            raise LauncherError(f"kubernetes.{key}: expected a mapping of names to values")
        setattr(opts, key, {str(k): str(v) for k, v in value.items()})
    for key in _MAPPING_LISTS:
        value = special.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise LauncherError(f"kubernetes.{key}: expected a list of mappings")
        setattr(opts, key, value)
    _check(opts)
    return opts


def _check(o: KubernetesOptions) -> None:
    for var in o.env:
        if var in TRACKING_SECRET_KEYS or _SECRETISH.search(var):
            raise LauncherError(
                f"kubernetes.env.{var} looks like a credential; never inline it: put it in a "
                f"Secret and use kubernetes.secret_env.{var}=SECRET/KEY (or kubernetes.tracking_secret)"
            )
    for var, ref in o.secret_env.items():
        if ref.count("/") != 1 or not all(ref.split("/")):
            raise LauncherError(
                f"kubernetes.secret_env.{var}: expected 'secret-name/key', got {ref!r}"
            )
    if o.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise LauncherError("kubernetes.image_pull_policy: use Always, IfNotPresent or Never")
    if not o.command:
        raise LauncherError("kubernetes.command: must not be empty (the image runs `lfads`)")
    if o.run_as_user == 0:
        raise LauncherError("kubernetes.run_as_user: pods run as non-root; pick a uid other than 0")
    for v in o.volumes:
        bad = sorted(set(v) - set(_VOLUME_KEYS))
        kinds = [k for k in ("claim", "empty_dir", "host_path") if v.get(k) not in (None, False)]
        if bad or "name" not in v or "mount_path" not in v or len(kinds) != 1:
            raise LauncherError(
                f"kubernetes.volumes: {v!r} needs name, mount_path and one of claim (a PVC), "
                f"empty_dir or host_path; valid keys: {', '.join(_VOLUME_KEYS)}"
            )
    for t in o.tolerations:
        bad = sorted(set(t) - set(_TOLERATION_KEYS))
        if bad:
            raise LauncherError(
                f"kubernetes.tolerations: unknown key {bad[0]!r}; valid keys: {', '.join(_TOLERATION_KEYS)}"
            )


def cpu_cores(quantity: str) -> float:
    """A CPU quantity ('2', '500m', '1.5') in cores."""
    q = str(quantity).strip()
    return float(q[:-1]) / 1000.0 if q.endswith("m") else float(q)


def default_threads(o: KubernetesOptions) -> int:
    return max(1, math.ceil(cpu_cores(o.cpu)))


def label_value(value: Any) -> str:
    """Label values: at most 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends."""
    text = re.sub(r"[^-A-Za-z0-9_.]", "-", str(value))[:63].strip("-_.")
    return text if _LABEL_VALUE.match(text) else ""


def job_name(spec: JobSpec) -> str:
    """A readable, unique, DNS-1123 name: lfads-m03-g002-a0-<run id prefix> for a PBT member."""
    labels = spec.labels
    if "member" in labels and "generation" in labels:
        stem = "lfads-m{:02d}-g{:03d}-a{}".format(
            int(labels["member"]), int(labels["generation"]), labels.get("attempt", "0")
        )
    else:
        stem = "lfads-" + re.sub(r"[^a-z0-9]", "", labels.get("kind", "job").lower())[:10]
    suffix = re.sub(r"[^a-z0-9]", "", spec.run_id.lower())[:12] or "x"
    return f"{stem}-{suffix}"[:52]  # pods add "-xxxxx"; the job-name label must fit in 63


def job_labels(o: KubernetesOptions, spec: JobSpec) -> dict[str, str]:
    """Labels tying the Job (and its pod) to the run, the PBT run, member and generation."""
    labels = {
        **o.labels,
        "app.kubernetes.io/name": "lfads",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "lfads-lightning",
        LABEL_PREFIX + "run-id": label_value(spec.run_id),
    }
    for name in SPEC_LABELS:
        if spec.labels.get(name) not in (None, ""):
            labels[LABEL_PREFIX + name] = label_value(spec.labels[name])
    return labels


def _env(o: KubernetesOptions, threads: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": str(threads)} for k in THREAD_VARS]
    # A read-only root filesystem leaves /tmp (an emptyDir) as the place to write scratch files.
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "MPLCONFIGDIR", "value": "/tmp/mpl"}]
    env += [{"name": k, "value": v} for k, v in o.env.items()]
    if o.tracking_secret:
        env += [
            {
                "name": var,
                "valueFrom": {
                    "secretKeyRef": {"name": o.tracking_secret, "key": key, "optional": True}
                },
            }
            for var, key in TRACKING_SECRET_KEYS.items()
        ]
    for var, ref in o.secret_env.items():
        secret, key = ref.split("/")
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _volumes(o: KubernetesOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    for v in o.volumes:
        if v.get("claim"):
            source = {"persistentVolumeClaim": {"claimName": str(v["claim"])}}
        elif v.get("host_path"):
            source = {"hostPath": {"path": str(v["host_path"])}}
        else:
            source = {"emptyDir": {}}
        volumes.append({"name": str(v["name"]), **source})
        mount = {"name": str(v["name"]), "mountPath": str(v["mount_path"])}
        if v.get("read_only"):
            mount["readOnly"] = True
        if v.get("sub_path"):
            mount["subPath"] = str(v["sub_path"])
        mounts.append(mount)
    return volumes, mounts


def _resources(o: KubernetesOptions) -> dict[str, Any]:
    """Requests and limits, always both: a worker without limits can starve its node."""
    requests = {"cpu": o.cpu, "memory": o.memory}
    limits = {"cpu": o.cpu_limit or o.cpu, "memory": o.memory_limit or o.memory}
    if o.gpus:
        requests[o.gpu_resource] = limits[o.gpu_resource] = str(o.gpus)
    return {"requests": requests, "limits": limits}


def _container(o: KubernetesOptions, spec: JobSpec, threads: int) -> dict[str, Any]:
    """The worker container: our image, the spec's arguments, non-root, read-only, no caps."""
    volumes, mounts = _volumes(o)
    if o.tracking_uri:
        spec = spec.with_tracking_uri(o.tracking_uri)
    container: dict[str, Any] = {
        "name": "worker",
        "image": o.image,
        "imagePullPolicy": o.image_pull_policy,
        "command": list(o.command),
        "args": list(spec.args),
        "env": _env(o, threads),
        "resources": _resources(o),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": o.run_as_user,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": o.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if o.working_dir:
        container["workingDir"] = o.working_dir
    return container


def _pod(o: KubernetesOptions, container: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": bool(o.service_account),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": o.run_as_user,
            "runAsGroup": o.run_as_user,
            "fsGroup": o.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(o)[0],
    }
    if o.service_account:
        pod["serviceAccountName"] = o.service_account
    if o.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in o.image_pull_secrets]
    if o.node_selector:
        pod["nodeSelector"] = dict(o.node_selector)
    if o.tolerations:
        pod["tolerations"] = [
            {("tolerationSeconds" if k == "toleration_seconds" else k): v for k, v in t.items()}
            for t in o.tolerations
        ]
    return pod


def job_manifest(o: KubernetesOptions, spec: JobSpec) -> dict[str, Any]:
    """The batch/v1 Job running the spec's command for one run (a plain dict, no client)."""
    labels = job_labels(o, spec)
    pod = _pod(o, _container(o, spec, spec.threads or default_threads(o)))
    job_spec: dict[str, Any] = {
        "backoffLimit": o.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if o.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = o.active_deadline_seconds
    if o.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = o.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec),
            "namespace": o.namespace,
            "labels": labels,
            "annotations": {"lfads.io/mlflow-run-id": spec.run_id},
        },
        "spec": job_spec,
    }
