"""The job spec: everything a launcher is told about one job, and nothing it must look up.

A job runs the project's command line (`lfads ARGS...`, by default the one worker entry
`lfads worker --run-id R --tracking-uri U`); each backend decides how to start the program
(this interpreter, the compute node's interpreter, the container image's entrypoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

# torch/OpenMP/BLAS read these; every backend sets them to the job's threads.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LFADS_THREADS")


# The worker asks its launcher to requeue it: it saved its state on USR2 and left its run open.
REQUEUE_EXIT = 75
# Where a worker keeps the state it saved on USR2 until its requeued execution uploads it; set
# by launchers whose jobs can be preempted and requeued (SLURM).
SPILL_DIR_ENV = "LFADS_SPILL_DIR"


def worker_args(run_id: str, tracking_uri: str) -> tuple[str, ...]:
    return ("worker", "--run-id", run_id, "--tracking-uri", tracking_uri)


@dataclass(frozen=True)
class Resources:
    """What one job asks for; None leaves it to the backend's own options."""

    cpus: int | None = None
    gpus: int | None = None
    memory: str | None = None  # e.g. "4G" / "4Gi", as the backend writes it


@dataclass(frozen=True)
class JobSpec:
    run_id: str  # the MLflow run the job works for (names and labels the job)
    tracking_uri: str
    args: tuple[str, ...] = ()  # the CLI's arguments; default: the worker for run_id
    threads: int | None = None  # torch/OMP threads; None: the backend's default
    resources: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)  # kind, pbt-run, member, ...
    log_dir: str | None = None  # where the job's log goes (None: the terminal / backend)
    name: str = ""  # human-readable job name, e.g. m03-g001
    # Host paths the job reads ("ro") or writes ("rw") besides the tracking store: its data
    # files, its output dir. Backends with their own filesystem (a container) mount them.
    paths: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.args:
            object.__setattr__(self, "args", worker_args(self.run_id, self.tracking_uri))

    def with_tracking_uri(self, uri: str) -> JobSpec:
        """The same job reporting to another URI (e.g. the one pods reach the server at)."""
        args = list(self.args)
        if "--tracking-uri" in args:
            args[args.index("--tracking-uri") + 1] = uri
        return dataclasses.replace(self, tracking_uri=uri, args=tuple(args))

    def thread_env(self, default: int | None = None) -> dict[str, str]:
        threads = self.threads or default
        return {var: str(threads) for var in THREAD_VARS} if threads else {}
