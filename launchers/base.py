"""The launcher contract: submit a worker for an MLflow run, poll its state, cancel it.

A worker job is the same on every backend: `python -m lfads_lightning worker --run-id ID
--tracking-uri URI`; it reads everything else (config, checkpoint to start from) from MLflow.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


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


def worker_command(run_id: str, tracking_uri: str, python: str | None = None) -> list[str]:
    return [
        python or sys.executable,
        "-m",
        "lfads_lightning",
        "worker",
        "--run-id",
        run_id,
        "--tracking-uri",
        tracking_uri,
    ]


class Launcher(ABC):
    """One backend. Options come from the config section named after the launcher (`slurm:`,
    `kubernetes:`, ...) as keyword arguments; a backend validates them itself."""

    name: str = ""

    @abstractmethod
    def submit(self, run_id: str, tracking_uri: str, threads: int | None = None) -> JobHandle:
        """Start the worker for `run_id`; return at once."""

    def submit_many(
        self, run_ids: list[str], tracking_uri: str, threads: int | None = None
    ) -> list[JobHandle]:
        """Start several workers at once (one handle per run, same order). Backends with a
        batch primitive (a SLURM job array) override this; the default submits one by one."""
        return [self.submit(run_id, tracking_uri, threads=threads) for run_id in run_ids]

    def default_concurrency(self, population: int) -> int:
        """How many member jobs run at once when the PBT config does not say: on this machine,
        one per core. Cluster backends return `population` (the scheduler queues the rest)."""
        return max(1, min(population, os.cpu_count() or 1))

    def default_threads(self, concurrency: int) -> int:
        """torch/OMP threads per job when the config does not say: this machine's cores shared
        among concurrent jobs. Cluster backends return the cores their job requests."""
        return max(1, (os.cpu_count() or 1) // max(1, concurrency))

    def prestart(self, jobs: int, threads: int | None = None) -> None:  # noqa: B027
        """Get ready for `jobs` concurrent jobs before the first submit (warm workers); no-op."""

    def check(self) -> None:  # noqa: B027
        """Verify the options against the backend before any run exists (e.g. sbatch --test-only,
        so a wrong partition fails at once, not after runs were created); no-op by default."""

    def adopt(self, handle: JobHandle, tracking_uri: str) -> None:  # noqa: B027
        """Take charge of a job a previous controller submitted (`--resume`), so that this
        launcher also cleans it up when it ends; no-op where nothing needs cleaning."""

    def close(self) -> None:  # noqa: B027
        """Release what the launcher holds (idle workers, API clients); running jobs go on."""

    @abstractmethod
    def poll(self, handle: JobHandle) -> JobState:
        """Current state of the job, without blocking."""

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
