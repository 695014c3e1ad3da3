"""Local launcher: each worker is a subprocess of this machine.

Workers run in their own process group so cancelling also stops anything they started, and
with a fixed number of torch/OpenMP threads: several processes at default threads on a small
machine run many times slower than with one thread each.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .base import JobHandle, JobState, Launcher, worker_command

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LFADS_THREADS")


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, log_dir: str | Path | None = None, python: str | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.python = python
        self._procs: dict[str, subprocess.Popen] = {}

    def submit(self, run_id: str, tracking_uri: str, threads: int | None = None) -> JobHandle:
        env = dict(os.environ)
        if threads:
            env.update({var: str(threads) for var in THREAD_VARS})
        stdout = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stdout = open(self.log_dir / f"{run_id}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            worker_command(run_id, tracking_uri, self.python),
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            start_new_session=True,
        )
        if stdout is not None:
            stdout.close()
        self._procs[str(proc.pid)] = proc
        return JobHandle(self.name, str(proc.pid), run_id)

    def poll(self, handle: JobHandle) -> JobState:
        proc = self._procs.get(handle.job_id)
        if proc is None:
            # Not started by this launcher instance (e.g. before a controller restart).
            return JobState.RUNNING if _pid_alive(int(handle.job_id)) else JobState.UNKNOWN
        code = proc.poll()
        if code is None:
            return JobState.RUNNING
        if code == 0:
            return JobState.SUCCEEDED
        if code < 0 and -code in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            return JobState.CANCELLED
        return JobState.FAILED

    def exit_code(self, handle: JobHandle) -> int | None:
        proc = self._procs.get(handle.job_id)
        return None if proc is None else proc.poll()

    def cancel(self, handle: JobHandle, grace: float = 10.0) -> None:
        pid = int(handle.job_id)
        proc = self._procs.get(handle.job_id)
        if proc is not None and proc.poll() is not None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if proc is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                proc.wait()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
