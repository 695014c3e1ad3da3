"""The heartbeat timeout counts time a member job runs, not time it waits in a cluster queue.

The launcher here is a stand-in whose state the test sets (a queue that holds a job for longer
than the timeout cannot be produced on the local launcher); the MLflow store is real.
"""

from __future__ import annotations

import time

from mlflow import MlflowClient

from launchers import JobHandle, JobState, Launcher
from lfads_lightning.config import LfadsConfig
from lfads_lightning.pbt.config import PbtConfig
from lfads_lightning.pbt.controller import Controller
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import MemberRun


class ScriptedLauncher(Launcher):
    name = "scripted"

    def __init__(self, uri: str = "") -> None:
        self.state = JobState.PENDING
        self.cancelled: list[str] = []
        self.uri = uri
        self.status_at_cancel: list[str] = []

    def submit(self, spec):
        return JobHandle(self.name, "1", spec.run_id)

    def poll(self, handle):
        return self.state

    def cancel(self, handle):
        self.cancelled.append(handle.run_id)
        if self.uri:  # what the worker would find if the cancel stopped it
            self.status_at_cancel.append(MlflowClient(self.uri).get_run(handle.run_id).info.status)


def make(tmp_path, timeout: float):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("hb", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(exp).info.run_id
    launcher = ScriptedLauncher(uri)
    pbt = PbtConfig(heartbeat_timeout=timeout, retries=0)
    controller = Controller(uri, run_id, LfadsConfig(), pbt, launcher, log=lambda msg: None)
    submitted = time.time() - 10 * timeout  # submitted long ago, no heartbeat ever written
    member = MemberRun(
        run_id, 0, 0, 0, "running", "RUNNING", None, None, None, {},
        job={"launcher": "scripted", "job_id": "1", "submitted_at": submitted},
    )  # fmt: skip
    return controller, launcher, member


def test_a_queued_job_is_not_hung_however_long_it_waits(tmp_path):
    controller, launcher, member = make(tmp_path, timeout=0.5)
    assert controller._check(member) is None
    assert launcher.cancelled == []


def test_the_clock_starts_when_the_job_leaves_the_queue(tmp_path):
    controller, launcher, member = make(tmp_path, timeout=0.5)
    assert controller._check(member) is None  # queued
    launcher.state = JobState.RUNNING
    assert controller._check(member) is None  # just started: not hung yet
    time.sleep(0.7)
    outcome = controller._check(member)
    assert outcome is not None and "no heartbeat" in outcome
    assert launcher.cancelled == []  # _check only reports; _fail closes the run, then cancels
    assert controller._fail(member, outcome) is None  # no retries left in this config
    assert launcher.cancelled == [member.run_id]
    # The run was closed with the controller's reason before its job was stopped, so a worker
    # stopped by the cancel (KILLED, "stopped by SIGTERM") cannot overwrite why it failed.
    assert launcher.status_at_cancel == ["FAILED"]
    assert (
        "no heartbeat" in MlflowClient(launcher.uri).get_run(member.run_id).data.tags["lfads.error"]
    )


def test_a_running_job_without_heartbeat_since_submission_is_hung(tmp_path):
    controller, launcher, member = make(tmp_path, timeout=0.5)
    launcher.state = JobState.RUNNING
    outcome = controller._check(member)
    assert outcome is not None and "no heartbeat" in outcome
