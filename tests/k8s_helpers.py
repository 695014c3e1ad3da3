"""Shared by the `k8s` tests: where the test cluster is, and launcher options that run our image.

The cluster (tools/k8s/cluster.sh: real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and a kubelet on containerd + runc) is started by `python3 dev.py tests_k8s`.
Pods run the project's image (imported from an OCI archive, never pulled) on a CNI bridge; they
reach servers on this host at the bridge's gateway address. Tests fail, not skip, when it is down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = Path(os.environ.get("LFADS_K8S_RUN", Path.home() / ".cache" / "lfads-k8s" / "run"))
KUBECONFIG = Path(os.environ.get("LFADS_K8S_KUBECONFIG", RUN / "kubeconfig"))
# What cluster.sh imports from $LFADS_IMAGE_ARCHIVE (tools/image.sh builds it).
IMAGE = os.environ.get("LFADS_IMAGE", "localhost/lfads-lightning:cpu")
# Enough for a tiny-model worker (torch + Lightning + MLflow client); the OOM test sets less.
WORKER_MEMORY = "1536Mi"


def host_ip() -> str:
    """The address pods reach this host at (the CNI bridge's gateway), from cluster.sh."""
    path = RUN / "host-ip"
    if not path.is_file():
        pytest.fail(f"no test cluster: {path} missing; run tools/k8s/cluster.sh start")
    return path.read_text().strip()


def kube_options(
    faults: str = "", data_dir: Path | None = None, source: bool = False, **extra: Any
) -> dict[str, Any]:
    """A `kubernetes:` section for the test cluster: our image as it was imported (never pulled),
    a quarter core requested and one core as the limit, `faults` as the pods' LFADS_FAULTS
    (lfads_lightning/faults.py). `data_dir` is mounted read-only at its own path (a hostPath), so
    the resolved data paths of the config hold in the pod too. `source`: the pods run this
    checkout's package (read-only hostPath first on PYTHONPATH) in the image's environment, for
    tests of code newer than the image that was built."""
    if not KUBECONFIG.is_file():
        pytest.fail(f"no test cluster: {KUBECONFIG} missing; run tools/k8s/cluster.sh start")
    present = RUN / "images" / "present"
    if IMAGE not in (present.read_text().split() if present.is_file() else []):
        pytest.fail(
            f"image {IMAGE} is not in the cluster's containerd; build it (tools/image.sh build) "
            "or set LFADS_IMAGE_ARCHIVE, then tools/k8s/cluster.sh start"
        )
    volumes = list(extra.pop("volumes", []))
    env = {"LFADS_FAULTS": faults} if faults else {}
    if source:
        env["PYTHONPATH"] = str(ROOT)
        volumes.append(
            {"name": "source", "host_path": str(ROOT), "mount_path": str(ROOT), "read_only": True}
        )
    if data_dir is not None:
        data_dir.chmod(0o755)  # pytest makes it 0700 (root's); the pod runs as uid 1000
        volumes.append(
            {"name": "data", "host_path": str(data_dir), "mount_path": str(data_dir),
             "read_only": True}
        )  # fmt: skip
    return {
        "kubeconfig": str(KUBECONFIG),
        "namespace": "default",
        "image": IMAGE,
        "image_pull_policy": "Never",
        "cpu": "250m",
        "cpu_limit": "1",
        "memory": WORKER_MEMORY,
        "env": env,
        "ttl_seconds_after_finished": 300,
        "volumes": volumes,
        **extra,
    }


def apis() -> tuple[Any, Any]:
    """(BatchV1Api, CoreV1Api) on the test cluster."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    return client.BatchV1Api(api), client.CoreV1Api(api)
