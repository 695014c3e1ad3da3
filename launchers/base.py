"""The launcher contract: submit a worker for an MLflow run, poll its state, cancel it.

A worker job is the same on every backend: `python -m lfads_lightning worker --run-id ID
--tracking-uri URI`; it reads everything else (config, checkpoint to start from) from MLflow.
"""

from __future__ import annotations

import enum
import importlib
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from lfads_lightning.errors import ConfigError


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
    name: str = ""

    @abstractmethod
    def submit(self, run_id: str, tracking_uri: str, threads: int | None = None) -> JobHandle:
        """Start the worker for `run_id`; return at once."""

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


_BACKENDS = {
    "local": "launchers.local:LocalLauncher",
    "slurm": "launchers.slurm:SlurmLauncher",
    "kubernetes": "launchers.kubernetes:KubernetesLauncher",
}


def get_launcher(name: str, **options: Any) -> Launcher:
    if name not in _BACKENDS:
        raise ConfigError(f"unknown launcher {name!r}; valid launchers: {', '.join(_BACKENDS)}")
    module_name, cls_name = _BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ConfigError(
                f"launcher {name!r} is not implemented in this version; use --launcher local"
            ) from None
        raise ConfigError(
            f"launcher {name!r} needs the package {err.name!r}; install it or use --launcher local"
        ) from None
    return getattr(module, cls_name)(**options)
