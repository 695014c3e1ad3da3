"""The launcher contract: submit a job spec, poll its state, cancel it.

A worker job is the same on every backend: the project's `worker --run-id ID --tracking-uri
URI` (JobSpec.args); it reads everything else (config, checkpoint to start from) from MLflow.
Launchers know nothing of MLflow or PBT: what they need is in the spec.
"""

from __future__ import annotations

import enum
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from launchers.spec import JobSpec


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class JobHandle:
    """What a launcher needs to find a job again (also after the controller restarts)."""

    launcher: str
    job_id: str
    run_id: str
    info: dict[str, Any] = field(default_factory=dict)


class Launcher(ABC):
    """One backend. Options come from the config section named after the launcher (`slurm:`,
    `kubernetes:`, ...) as keyword arguments; a backend validates them itself."""

    name: str = ""

    @abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle:
        """Start the job; return at once."""

    def submit_many(self, specs: list[JobSpec]) -> list[JobHandle]:
        """Start several jobs at once (one handle per spec, same order). Backends with a batch
        primitive (a SLURM job array) override this; the default submits one by one."""
        return [self.submit(spec) for spec in specs]

    def default_concurrency(self, population: int) -> int:
        """How many member jobs run at once when the PBT config does not say: on this machine,
        one per core. Cluster backends return `population` (the scheduler queues the rest)."""
        return max(1, min(population, os.cpu_count() or 1))

    def default_threads(self, concurrency: int) -> int:
        """torch/OMP threads per job when the config does not say: this machine's cores shared
        among concurrent jobs. Cluster backends return the cores their job requests."""
        return max(1, (os.cpu_count() or 1) // max(1, concurrency))

    def prestart(  # noqa: B027
        self, jobs: int, threads: int | None = None, log_dir: str | None = None
    ) -> None:
        """Get ready for `jobs` concurrent jobs before the first submit (warm workers); no-op."""

    def check(self, tracking_uri: str | None = None) -> None:  # noqa: B027
        """Verify the options (and that jobs can reach `tracking_uri`) against the backend
        before any run exists (e.g. sbatch --test-only, so a wrong partition fails at once, not
        after runs were created); no-op by default."""

    def adopt(self, handle: JobHandle) -> None:  # noqa: B027
        """Take charge of a job a previous controller submitted (`--resume`), so that this
        launcher also cleans it up when it ends; no-op where nothing needs cleaning."""

    def release(self, handle: JobHandle) -> None:  # noqa: B027
        """The caller has what it needs from this job (its run is closed): the job is about to
        end, and the launcher may clean it up once it has; no-op where nothing needs cleaning."""

    def close(self) -> None:  # noqa: B027
        """Release what the launcher holds (idle workers, API clients); running jobs go on."""

    @abstractmethod
    def poll(self, handle: JobHandle) -> JobState:
        """Current state of the job, without blocking."""

    def describe(self, handle: JobHandle) -> str:
        """A few words on how an ended job ended (for messages); by default its state."""
        return self.poll(handle).value

    @abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the job; a no-op for a job that already ended."""

    def wait(
        self, handle: JobHandle, poll_interval: float = 0.5, timeout: float | None = None
    ) -> JobState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.poll(handle)
            if state.terminal:
                return state
            if deadline is not None and time.monotonic() > deadline:
                return state
            time.sleep(poll_interval)
