"""Launcher plugins: run a worker job somewhere (local processes, SLURM, Kubernetes).

A launcher is given a job spec (run id, tracking URI, command, threads, resources, labels, log
folder) and nothing else: this package imports nothing from `lfads_lightning`. Backends are
imported lazily by `get_launcher`, so heavy clients (submitit, kubernetes) cost nothing unless
used.
"""

from __future__ import annotations

from launchers.base import JobHandle, JobState, Launcher
from launchers.errors import LauncherError
from launchers.registry import LAUNCHER_NAMES, get_launcher
from launchers.spec import JobSpec, Resources, worker_args

__all__ = [
    "LAUNCHER_NAMES",
    "JobHandle",
    "JobSpec",
    "JobState",
    "Launcher",
    "LauncherError",
    "Resources",
    "get_launcher",
    "worker_args",
]
