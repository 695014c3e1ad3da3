"""SLURM launcher: each job is a submitit job; a batch of jobs is one job array.

The job runs the spec's command (the worker) as a child of the submitit process. Requeue has
one owner, submitit: on USR2 the worker saves its own state and exits (it registers that
itself), `WorkerCommand.checkpoint` then hands submitit the same command to requeue.

Job states come from sacct through submitit's watcher, refreshed at most every few seconds for
all jobs at once. A handle holds only JSON values (the SLURM id such as `123_4`, the submitit
folder), so a controller started later polls and cancels jobs it did not submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from launchers.base import JobHandle, JobState, Launcher
from launchers.errors import LauncherError
from launchers.spec import REQUEUE_EXIT, SPILL_DIR_ENV, THREAD_VARS, JobSpec
from launchers.typed_options import launcher_section

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
        raise LauncherError(
            f"slurm.additional_parameters: expected a mapping of sbatch options "
            f"(e.g. {{mail_type: END}}), got {extra!r}"
        )
    opts = launcher_section(SlurmOptions, data, "slurm.")
    for name in ("time_min", "cpus_per_task", "array_parallelism"):
        if getattr(opts, name) < 1:
            raise LauncherError(f"slurm.{name} must be at least 1, got {getattr(opts, name)}")
    if opts.gpus_per_node < 0:
        raise LauncherError(f"slurm.gpus_per_node must be 0 or more, got {opts.gpus_per_node}")
    return dataclasses.replace(opts, additional_parameters=dict(extra))


class WorkerCommand(submitit.helpers.Checkpointable):
    """The callable a SLURM job runs: the job spec's command, as a child process.

    Preemption is the worker's business: on USR2 (SLURM's warning before preemption or the
    time limit) the worker saves its own state and exits with REQUEUE_EXIT, leaving its run
    open. This only passes the signal on, waits for the worker to exit, and gives submitit the
    same command to requeue; the requeued worker finds what it saved and resumes from it.
    """

    def __init__(self, command: list[str], env: dict[str, str], grace_s: float = 90.0) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.grace_s = grace_s
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> int:
        self._proc = subprocess.Popen(self.command, env={**os.environ, **self.env})
        # Poll, not wait(): submitit's USR2 handler runs on this thread and calls checkpoint(),
        # which waits for the worker itself; a blocking wait() here would hold Popen's lock.
        while (code := self._proc.poll()) is None:
            time.sleep(0.5)
        if code == REQUEUE_EXIT:  # the worker got USR2 and this process did not: requeue now
            signal.raise_signal(signal.SIGUSR2)  # submitit's handler: checkpoint() + requeue
            raise RuntimeError("the worker saved its state for a requeue, but none happened")
        if code != 0:  # the run already says why (lfads.error); sacct shows FAILED
            raise RuntimeError(f"worker {' '.join(self.command[-4:])} exited with code {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2: let the worker save its state, then requeue the job."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR2)  # a second USR2 (SLURM's own) is harmless
            try:
                proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:  # it could not save in time: requeue anyway
                proc.kill()
        return submitit.helpers.DelayedSubmission(
            WorkerCommand(self.command, self.env, self.grace_s)
        )


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(options)
        self._watcher = submitit.slurm.slurm.SlurmInfoWatcher(delay_s=600)
        self._last_sacct = float("-inf")

    # ------------------------------------------------------------------ sbatch

    def _executor(self, folder: Path, threads: int | None) -> submitit.SlurmExecutor:
        o = self.options
        threads = threads or o.cpus_per_task
        executor = submitit.SlurmExecutor(
            folder=folder / "%j", max_num_timeout=o.max_requeues, python=o.python
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

    def _handle(self, job: Any, run_id: str, folder: Path) -> JobHandle:
        info = {"folder": str(folder), "slurm_submitted": time.time()}
        return JobHandle(self.name, str(job.job_id), run_id, info)

    def _command(self, spec: JobSpec, folder: Path) -> WorkerCommand:
        """The worker on the compute node, told where to keep its state across a requeue."""
        python = self.options.python or sys.executable
        env = {SPILL_DIR_ENV: str(folder / "interrupted")}
        grace = max(10.0, self.options.signal_delay_s - 15.0)
        return WorkerCommand([python, "-m", "lfads_lightning", *spec.args], env, grace)

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

    def check(self, tracking_uri: str | None = None) -> None:
        if shutil.which("sbatch") is None:
            raise LauncherError(
                "sbatch not found: run lfads with --launcher slurm on a SLURM login node "
                "(or start the local cluster: tools/slurm_cluster.sh start)"
            )
        cmd = ["sbatch", "--test-only", *self.sbatch_flags(), "--wrap", "true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["(no message)"]
            raise LauncherError(
                f"sbatch rejects the slurm: options ({lines[0].removeprefix('sbatch: error: ')}); "
                f"fix slurm.partition, account, qos, time_min or the resource requests"
            )

    def submit(self, spec: JobSpec) -> JobHandle:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list[JobSpec]) -> list[JobHandle]:
        """One sbatch for the whole batch: a job array when there are several jobs (they share
        the first spec's threads and log folder, as a generation's members do)."""
        if not specs:
            return []
        folder = Path(specs[0].log_dir or Path.cwd() / "lfads_output" / "slurm").resolve()
        executor = self._executor(folder, specs[0].threads)
        jobs = []
        try:
            with executor.batch():
                for spec in specs:
                    jobs.append(executor.submit(self._command(spec, folder)))
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as err:
            first = (str(err).strip().splitlines() or ["(no message)"])[0]
            raise LauncherError(
                f"sbatch refused the job ({first}); check the slurm: options "
                f"(partition, account, qos, time_min)"
            ) from None
        handles = [
            self._handle(job, spec.run_id, folder) for job, spec in zip(jobs, specs, strict=True)
        ]
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

    def describe(self, handle: JobHandle) -> str:
        """sacct's state and, if submitit gave up on a requeue, its reason (from the job log)."""
        sacct = self._watcher.get_state(handle.job_id, mode="cache") or "unknown"
        text = f"{map_state(sacct).value}: {sacct}"
        folder = handle.info.get("folder")
        if folder:
            log = submitit.SlurmJob(Path(folder) / "%j", handle.job_id).paths.stdout
            if log.is_file():
                reasons = [
                    ln
                    for ln in log.read_text(errors="replace").splitlines()
                    if "not requeued" in ln
                ]
                if reasons:
                    text += ": " + reasons[-1].split("not requeued because:")[-1].strip(" .")
        return text

    def cancel(self, handle: JobHandle) -> None:
        """scancel; a no-op for a job that already ended (scancel then only complains)."""
        subprocess.run(["scancel", handle.job_id], capture_output=True, check=False, timeout=60)

    def default_concurrency(self, population: int) -> int:
        return population  # the scheduler queues what does not fit

    def default_threads(self, concurrency: int) -> int:
        return self.options.cpus_per_task
