"""Launcher plugins: run a member's worker job somewhere (local processes, SLURM, Kubernetes).

Backends are imported lazily by `get_launcher`, so heavy clients (submitit, kubernetes) cost
nothing unless used.
"""

from __future__ import annotations

from .base import JobHandle, JobState, Launcher, get_launcher, worker_command

__all__ = ["JobHandle", "JobState", "Launcher", "get_launcher", "worker_command"]
