"""Shared by the `k8s` tests: where the test cluster's kubeconfig is, and launcher options that
make the fake kubelet's local processes run this environment's `lfads`.

The cluster (tools/k8s/cluster.sh: real etcd, kube-apiserver, kube-controller-manager and
kube-scheduler; a fake kubelet running pods as local processes, since there is no container
runtime here) is started by `python3 dev.py tests_k8s`. Tests fail, not skip, when it is down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

KUBECONFIG = Path(
    os.environ.get(
        "LFADS_K8S_KUBECONFIG", Path.home() / ".cache" / "lfads-k8s" / "run" / "kubeconfig"
    )
)


def kube_options(faults: str = "", **extra: Any) -> dict[str, Any]:
    """A `kubernetes:` section for the test cluster: small requests, the venv's interpreter as
    the container command (the fake kubelet ignores the image); `faults`: the pods'
    LFADS_FAULTS (lfads_lightning/faults.py), passed in the pod spec's env."""
    if not KUBECONFIG.is_file():
        pytest.fail(f"no test cluster: {KUBECONFIG} missing; run tools/k8s/cluster.sh start")
    return {
        "kubeconfig": str(KUBECONFIG),
        "namespace": "default",
        "image": "lfads-lightning:cpu",
        "command": [sys.executable, "-m", "lfads_lightning"],
        "cpu": "250m",
        "memory": "1Gi",
        "env": {"LFADS_FAULTS": faults} if faults else {},
        "ttl_seconds_after_finished": 300,
        **extra,
    }


def apis() -> tuple[Any, Any]:
    """(BatchV1Api, CoreV1Api) on the test cluster."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    return client.BatchV1Api(api), client.CoreV1Api(api)
