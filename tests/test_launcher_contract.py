"""The launcher contract, run against every launcher available here (local cold, local warm).

submit returns at once; poll never blocks and ends in a terminal state that matches the job's
outcome; cancel stops a running job; the MLflow run of a job is never left RUNNING. Real worker
processes and a real sqlite MLflow store. Local container mode runs with podman and the CPU
image (`nox -s tests_container`). SLURM runs against the project's single-node cluster
(tools/slurm_cluster.sh, `nox -s tests_slurm`); Kubernetes on the k8s test cluster (marked k8s),
whose pods report to an MLflow server instead.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from launchers import JobSpec, JobState, get_launcher
from lfads_lightning.config import LfadsConfig
from lfads_lightning.data.synth import make_dataset
from lfads_lightning.runs import tracking

from .helpers import member_tags
from .k8s_helpers import host_ip, kube_options
from .mlflow_server import mlflow_server
from .test_container import container_options
from .test_ray import ray_options

LAUNCHERS = {
    "local-cold": lambda tmp: get_launcher("local"),
    "local-warm": lambda tmp: get_launcher("local", warm=True),
    # Each job's worker in the CPU image via podman (tools/image.sh build; marked container)
    "local-container": lambda tmp: get_launcher("local", **container_options()),
    "slurm": lambda tmp: get_launcher("slurm"),
    # Jobs on the k8s test cluster; pods run our image (tests/k8s_helpers.py)
    "kubernetes": lambda tmp: _kubernetes(tmp),
    # Jobs on the project's Ray head (tools/ray_cluster.sh); the job env comes from ray.env
    "ray": lambda tmp: get_launcher("ray", **ray_options(env={"LFADS_FAULTS": FAULTS})),
}
# Every member job hangs after its first heartbeat (lfads_lightning/faults.py); the other jobs
# here are plain fits, which have no fault points.
FAULTS = "member.start=hang"
# Launchers that need a cluster run only in that cluster's session.
MARKS = {
    "slurm": pytest.mark.slurm,
    "kubernetes": pytest.mark.k8s,
    "ray": pytest.mark.ray,
    "local-container": pytest.mark.container,
}


def _kubernetes(tmp: Path) -> Any:
    """Pods (uid 1000, read-only root) read the data through a read-only hostPath of `tmp` and
    write outputs to an emptyDir at `tmp/out` (made here: the mount point cannot be made inside
    the read-only mount); their store is an MLflow server (`store`)."""
    (tmp / "out").mkdir(exist_ok=True)
    out = {"name": "out", "empty_dir": True, "mount_path": str(tmp / "out")}
    return get_launcher("kubernetes", **kube_options(faults=FAULTS, data_dir=tmp, volumes=[out]))


@pytest.fixture
def k8s_tracking(tmp_path):
    with mlflow_server(tmp_path / "mlflow-server", host=host_ip()) as uri:
        yield uri


@pytest.fixture(
    params=[pytest.param(name, marks=MARKS.get(name, ())) for name in sorted(LAUNCHERS)]
)
def launcher(request, tmp_path):
    instance = LAUNCHERS[request.param](tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def store(request, tmp_path, monkeypatch):
    monkeypatch.setenv("LFADS_FAULTS", FAULTS)  # inherited by the worker processes
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if request.node.callspec.params.get("launcher") == "kubernetes":
        # a pod (uid 1000) cannot write this host's root-owned sqlite file and artifact
        # folders: it reports to a tracking server, as pods do in production
        uri = request.getfixturevalue("k8s_tracking")
    tracking.check_store(uri)
    data = tmp_path / "d.h5"
    make_dataset(
        "lorenz", data, seed=2, n_conditions=3, trials_per_condition=4, n_steps=10, n_neurons=5
    )
    cfg = LfadsConfig()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, paths=[str(data)], synth=None, batch_size=6),
        model=dataclasses.replace(
            cfg.model,
            ic_enc_dim=4,
            ci_enc_dim=0,
            con_dim=0,
            co_dim=0,
            ic_dim=3,
            gen_dim=6,
            fac_dim=2,
        ),
        train=dataclasses.replace(cfg.train, max_epochs=1, progress_bar=False, threads=1),
        output=dataclasses.replace(
            cfg.output, dir=str(tmp_path / "out"), n_samples=1, figures=False
        ),
        tracking=dataclasses.replace(cfg.tracking, experiment="contract"),
    )
    return uri, cfg


def wait_terminal(launcher, handle, timeout: float = 120.0) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = time.monotonic()
        state = launcher.poll(handle)
        assert time.monotonic() - start < 1.0, "poll must not block"
        if state.terminal:
            return state
        time.sleep(0.2)
    raise AssertionError(f"job did not end within {timeout} s")


def spec(run_id: str, uri: str, tmp_path) -> JobSpec:
    """The job spec alone: every launcher gets the same one."""
    return JobSpec(run_id, uri, threads=1, labels={"kind": "fit"}, log_dir=str(tmp_path / "logs"))


def test_successful_job(launcher, store, tmp_path):
    uri, cfg = store
    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit"})
    start = time.monotonic()
    handle = launcher.submit(spec(run_id, uri, tmp_path))
    assert time.monotonic() - start < 5.0, "submit must return at once"
    assert handle.run_id == run_id and handle.launcher == launcher.name
    assert wait_terminal(launcher, handle) == JobState.SUCCEEDED
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_failing_job(launcher, store, tmp_path):
    uri, cfg = store
    missing = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, paths=[str(tmp_path / "gone.h5")])
    )
    run_id = tracking.create_config_run(missing, uri, {"kind": "fit"})
    handle = launcher.submit(spec(run_id, uri, tmp_path))
    assert wait_terminal(launcher, handle) == JobState.FAILED
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and "gone.h5" in run.data.tags["lfads.error"]


def test_cancel_a_running_job(launcher, store, tmp_path):
    """A member job told to hang (FAULTS) runs until cancelled."""
    uri, cfg = store
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=1))
    handle = launcher.submit(spec(run_id, uri, tmp_path))
    client = MlflowClient(uri)
    deadline = time.monotonic() + 60
    while "lfads.heartbeat" not in client.get_run(run_id).data.tags:  # the job really started
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert launcher.poll(handle) == JobState.RUNNING
    launcher.cancel(handle)
    assert wait_terminal(launcher, handle, timeout=30) in (JobState.CANCELLED, JobState.FAILED)
    launcher.cancel(handle)  # cancelling an ended job is a no-op
