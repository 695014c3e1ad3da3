"""SLURM launcher: each worker job is a submitit job; a batch of members is one job array.

The job runs `lfads_lightning.worker.fit.run_worker` for one MLflow run id (what `lfads worker`
runs), in the submitit process itself, so a preemption signal reaches the training loop: the
callable's `checkpoint()` saves the member's state to MLflow and submitit requeues the job
(submitit owns requeue; Lightning's SLURM auto-requeue is off in `training.make_trainer`).

Job states come from sacct through submitit's watcher, refreshed at most every few seconds for
all jobs at once. A handle holds only JSON values (the SLURM id such as `123_4`, the submitit
folder), so a controller started later polls and cancels jobs it did not submit.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from lfads_lightning.config import from_dict
from lfads_lightning.errors import ConfigError

from .base import JobHandle, JobState, Launcher
from .local import THREAD_VARS

# A job that sacct does not list yet right after sbatch is queued, not lost.
SUBMIT_GRACE_S = 120.0

_STATES = {
    "PENDING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESIZING": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    # Preempted jobs come back through requeue (submitit's, or the cluster's PreemptMode); one
    # that never does is failed by the controller's heartbeat timeout.
    "PREEMPTED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "CANCELLED": JobState.CANCELLED,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "REVOKED": JobState.FAILED,
}


def map_state(sacct_state: str) -> JobState:
    """sacct's State column ('CANCELLED by 0', 'RUNNING', ...) as a launcher state."""
    word = sacct_state.split()[0].rstrip("+").upper() if sacct_state.strip() else "UNKNOWN"
    return _STATES.get(word, JobState.UNKNOWN)


@dataclass
class SlurmOptions:
    """The `slurm:` config section: what an sbatch header would say."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60  # time limit per member job, minutes
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem: str | None = None  # e.g. "8G"; the cluster's default when unset
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # lines before the job: module load, venv
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch flag
    array_parallelism: int = 256  # at most this many array tasks run at once
    python: str | None = None  # interpreter on the compute nodes; default: this one
    job_name: str = "lfads"
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3  # requeues after hitting the time limit (preemptions are free)
    sacct_interval_s: float = 2.0  # at most one sacct call per interval


def parse_options(options: dict[str, Any]) -> SlurmOptions:
    data = dict(options)
    extra = data.pop("additional_parameters", None) or {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise ConfigError(
            f"slurm.additional_parameters: expected a mapping of sbatch options "
            f"(e.g. {{mail_type: END}}), got {extra!r}"
        )
    opts = from_dict(SlurmOptions, data, "slurm.")
    for name in ("time_min", "cpus_per_task", "array_parallelism"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"slurm.{name} must be at least 1, got {getattr(opts, name)}")
    if opts.gpus_per_node < 0:
        raise ConfigError(f"slurm.gpus_per_node must be 0 or more, got {opts.gpus_per_node}")
    return dataclasses.replace(opts, additional_parameters=dict(extra))


class WorkerJob(submitit.helpers.Checkpointable):
    """The callable a SLURM job runs: the worker of one MLflow run, requeueable.

    `spill_dir` (the launcher's log folder, which submitit needs on a shared filesystem anyway)
    holds the checkpoint written on USR2 until the requeued job has uploaded it to MLflow.
    """

    def __init__(
        self,
        run_id: str,
        tracking_uri: str,
        spill_dir: str | None = None,
        interrupted: tuple[str, int] | None = None,
    ) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.spill_dir = spill_dir
        self.interrupted = interrupted  # (checkpoint file, epoch) left by the previous execution

    def __call__(self) -> int:
        from lfads_lightning.runs import tracking
        from lfads_lightning.worker.entry import run_worker

        client = tracking.client(self.tracking_uri)
        status = client.get_run(self.run_id).info.status
        if status != "RUNNING":  # requeued after its run closed (e.g. USR2 at the very end)
            print(f"lfads: run {self.run_id} is already {status}; nothing to do", file=sys.stderr)
            return 0
        self._upload_interrupted(client)
        code = run_worker(self.run_id, self.tracking_uri)
        if code != 0:  # the run already says why (lfads.error); sacct shows FAILED
            raise RuntimeError(f"lfads worker for run {self.run_id} exited with code {code}")
        return code

    def _upload_interrupted(self, client: Any) -> None:
        from lfads_lightning.worker.member import upload_interrupted_member

        if self.interrupted is None or not Path(self.interrupted[0]).is_file():
            return
        path, epoch = Path(self.interrupted[0]), self.interrupted[1]
        try:
            upload_interrupted_member(client, self.run_id, path, epoch)
        except Exception as err:  # noqa: BLE001 - the member can still redo its generation
            print(
                f"lfads: could not upload the checkpoint saved at preemption ({err}); "
                f"the member starts its generation again",
                file=sys.stderr,
            )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (preemption, time limit): keep progress, then requeue."""
        from lfads_lightning.worker.member import save_interrupted_member

        interrupted = self.interrupted
        if self.spill_dir is not None:
            dest = Path(self.spill_dir) / "interrupted" / self.run_id / "last.ckpt"
            try:
                epoch = save_interrupted_member(dest)
            except Exception as err:  # noqa: BLE001 - never stop the requeue itself
                print(f"lfads: could not save the member at preemption: {err}", file=sys.stderr)
                epoch = None
            if epoch is not None:
                interrupted = (str(dest), epoch)
        job = WorkerJob(self.run_id, self.tracking_uri, self.spill_dir, interrupted)
        return submitit.helpers.DelayedSubmission(job)


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, log_dir: str | Path | None = None, **options: Any) -> None:
        self.options = parse_options(options)
        self.log_dir = Path(log_dir or Path.cwd() / "lfads_output" / "slurm").resolve()
        self._watcher = submitit.slurm.slurm.SlurmInfoWatcher(delay_s=600)
        self._last_sacct = float("-inf")

    # ------------------------------------------------------------------ sbatch

    def _executor(self, threads: int | None) -> submitit.SlurmExecutor:
        o = self.options
        threads = threads or o.cpus_per_task
        executor = submitit.SlurmExecutor(
            folder=self.log_dir / "%j", max_num_timeout=o.max_requeues, python=o.python
        )
        params: dict[str, Any] = {
            "job_name": o.job_name,
            "time": o.time_min,
            "cpus_per_task": o.cpus_per_task,
            "ntasks_per_node": 1,
            "nodes": 1,
            "signal_delay_s": o.signal_delay_s,
            "array_parallelism": o.array_parallelism,
            # task/none and many clusters enforce no CPU count: keep torch to its share.
            "setup": [*o.setup, *(f"export {var}={threads}" for var in THREAD_VARS)],
            "stderr_to_stdout": True,
        }
        optional = {
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "mem": o.mem,
            "constraint": o.constraint,
            "gpus_per_node": o.gpus_per_node or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if o.additional_parameters:
            params["additional_parameters"] = dict(o.additional_parameters)
        executor.update_parameters(**params)
        return executor

    def _handle(self, job: Any, run_id: str) -> JobHandle:
        info = {"folder": str(self.log_dir), "slurm_submitted": time.time()}
        return JobHandle(self.name, str(job.job_id), run_id, info)

    def sbatch_flags(self) -> list[str]:
        """The resource options as sbatch flags (what `check` asks sbatch about)."""
        o = self.options
        named = {
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "time": o.time_min,
            "cpus-per-task": o.cpus_per_task,
            "gpus-per-node": o.gpus_per_node or None,
            "mem": o.mem,
            "constraint": o.constraint,
        }
        for key, value in o.additional_parameters.items():
            named[key.replace("_", "-")] = value
        flags = []
        for key, value in named.items():
            if value is True:
                flags.append(f"--{key}")
            elif value is not None and value is not False:
                flags.append(f"--{key}={value}")
        return flags

    def check(self) -> None:
        if shutil.which("sbatch") is None:
            raise ConfigError(
                "sbatch not found: run lfads with --launcher slurm on a SLURM login node "
                "(or start the local cluster: tools/slurm_cluster.sh start)"
            )
        cmd = ["sbatch", "--test-only", *self.sbatch_flags(), "--wrap", "true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["(no message)"]
            raise ConfigError(
                f"sbatch rejects the slurm: options ({lines[0].removeprefix('sbatch: error: ')}); "
                f"fix slurm.partition, account, qos, time_min or the resource requests"
            )

    def submit(self, run_id: str, tracking_uri: str, threads: int | None = None) -> JobHandle:
        return self.submit_many([run_id], tracking_uri, threads)[0]

    def submit_many(
        self, run_ids: list[str], tracking_uri: str, threads: int | None = None
    ) -> list[JobHandle]:
        """One sbatch for the whole batch: a job array when there are several runs."""
        if not run_ids:
            return []
        executor = self._executor(threads)
        spill = str(self.log_dir)
        jobs = []
        try:
            with executor.batch():
                for run_id in run_ids:
                    jobs.append(executor.submit(WorkerJob(run_id, tracking_uri, spill)))
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as err:
            first = (str(err).strip().splitlines() or ["(no message)"])[0]
            raise ConfigError(
                f"sbatch refused the job ({first}); check the slurm: options "
                f"(partition, account, qos, time_min)"
            ) from None
        handles = [self._handle(job, run_id) for job, run_id in zip(jobs, run_ids, strict=True)]
        for handle in handles:
            self._watcher.register_job(handle.job_id)
        return handles

    # ------------------------------------------------------------------ state

    def poll(self, handle: JobHandle) -> JobState:
        job_id = handle.job_id
        if job_id not in self._watcher._registered:
            self._watcher.register_job(job_id)
            self._last_sacct = float("-inf")  # a job adopted after a restart: ask now
        if time.monotonic() - self._last_sacct >= self.options.sacct_interval_s:
            self._last_sacct = time.monotonic()
            self._watcher.update()
        state = map_state(self._watcher.get_state(job_id, mode="cache"))
        if state == JobState.UNKNOWN:
            submitted = float(handle.info.get("slurm_submitted", 0.0))
            if time.time() - submitted < SUBMIT_GRACE_S:
                return JobState.PENDING  # sacct has not caught up with sbatch yet
        return state

    def cancel(self, handle: JobHandle) -> None:
        """scancel; a no-op for a job that already ended (scancel then only complains)."""
        subprocess.run(["scancel", handle.job_id], capture_output=True, check=False, timeout=60)

    def default_concurrency(self, population: int) -> int:
        return population  # the scheduler queues what does not fit

    def default_threads(self, concurrency: int) -> int:
        return self.options.cpus_per_task
