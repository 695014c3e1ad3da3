"""Ray launcher: each job is a Ray job (the Jobs API of an existing cluster) running the spec's
command, the same worker as on every other launcher.

Jobs, not tasks: a task blocked in a subprocess is not stopped by `ray.cancel` (measured here:
the child kept running), while `stop_job` stops the whole process group of a job. A handle is
the dashboard address and the submission id, so a resumed controller polls and stops jobs it
did not submit. Ray does not retry a job (the controller owns retries). `ray` is imported here
only, and only when this launcher is used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from launchers.base import JobHandle, JobState, Launcher
from launchers.errors import LauncherError
from launchers.spec import JobSpec
from launchers.typed_options import launcher_section

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
_STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class RayOptions:
    """The `ray:` config section."""

    address: str | None = None  # the dashboard (Jobs API) URL; default $RAY_ADDRESS, then local
    num_cpus: float = 1.0  # entrypoint_num_cpus: CPUs Ray reserves for each job
    num_gpus: float = 0.0  # entrypoint_num_gpus
    memory_mb: int | None = None  # entrypoint_memory, in MiB
    env: dict[str, str] = field(default_factory=dict)  # runtime_env env_vars of every job
    job_name_prefix: str = "lfads"  # submission ids: PREFIX-<job name>-<random>
    concurrency: int | None = None  # jobs at once; default: the population (Ray queues them)
    python: str | None = None  # interpreter on the cluster's nodes; default: this one


def parse_options(options: dict[str, Any] | None) -> RayOptions:
    data = dict(options or {})
    env = data.pop("env", None) or {}
    if not isinstance(env, dict):
        raise LauncherError("ray.env: expected a mapping of environment variables to values")
    opts = launcher_section(RayOptions, data, "ray.")
    if opts.num_cpus <= 0 or opts.num_gpus < 0:
        raise LauncherError("ray.num_cpus must be > 0 and ray.num_gpus >= 0")
    if opts.concurrency is not None and opts.concurrency < 1:
        raise LauncherError(f"ray.concurrency must be at least 1, got {opts.concurrency}")
    if not opts.job_name_prefix or not opts.job_name_prefix.replace("-", "").isalnum():
        raise LauncherError("ray.job_name_prefix: letters, digits and '-' only")
    return dataclasses.replace(opts, env={str(k): str(v) for k, v in env.items()})


def dashboard_address(option: str | None) -> str:
    """The Jobs API URL: the option, else RAY_ADDRESS, else the local default; `host:port`
    and `ray://host:10001` are taken to mean that host's dashboard on 8265."""
    address = option or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if address.startswith("ray://"):
        address = f"http://{urlparse(address).hostname}:8265"
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def is_local(address: str) -> bool:
    import socket

    host = urlparse(address).hostname or ""
    return host in _LOCAL_HOSTS or host in (socket.gethostname(), socket.getfqdn())


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(options)
        self.address = dashboard_address(self.options.address)
        self._client = self._connect()
        self._last: dict[str, JobState] = {}

    def _connect(self) -> Any:
        try:
            from ray.job_submission import JobSubmissionClient
        except ModuleNotFoundError:
            raise LauncherError(
                "launcher 'ray' needs the package 'ray[default]'; pip install 'lfads-lightning[ray]'"
            ) from None
        try:
            client = JobSubmissionClient(self.address)
            client.list_jobs()
        except Exception as err:  # connection refused, a dashboard without the Jobs API, ...
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise LauncherError(
                f"ray: no Ray Jobs API at {self.address} ({first}); start the cluster with its "
                "dashboard (`ray start --head --dashboard-host=...`) and set ray.address or RAY_ADDRESS"
            ) from None
        return client

    # ------------------------------------------------------------------ checks

    def check(self, tracking_uri: str | None = None) -> None:
        """Before any run exists: a store the cluster can reach, resources it can give."""
        local_store = tracking_uri and not tracking_uri.startswith(("http://", "https://"))
        if local_store and not is_local(self.address):
            raise LauncherError(
                f"ray: jobs on the cluster at {self.address} cannot reach the local store "
                f"{tracking_uri}; run an MLflow tracking server (mlflow server --host 0.0.0.0) "
                "and pass --tracking-uri http://HOST:5000"
            )
        biggest = self._largest_node()
        if biggest is None:
            return
        cpus, gpus = biggest
        o = self.options
        if o.num_cpus > cpus or o.num_gpus > gpus:
            raise LauncherError(
                f"ray: each job asks for {o.num_cpus:g} CPU / {o.num_gpus:g} GPU but the largest "
                f"node of {self.address} has {cpus:g} / {gpus:g}; lower ray.num_cpus / ray.num_gpus"
            )

    def _largest_node(self) -> tuple[float, float] | None:
        """(CPUs, GPUs) of the cluster's largest alive node; None if the state API is silent."""
        try:
            from ray.util.state import list_nodes

            nodes = list_nodes(address=self.address, timeout=10, raise_on_missing_output=False)
        except Exception:  # an older dashboard: leave it to the scheduler
            return None
        alive = [n for n in nodes if getattr(n, "state", "ALIVE") == "ALIVE"]
        if not alive:
            return None
        totals = [getattr(n, "resources_total", {}) or {} for n in alive]
        return max(t.get("CPU", 0.0) for t in totals), max(t.get("GPU", 0.0) for t in totals)

    # ------------------------------------------------------------------ contract

    def default_concurrency(self, population: int) -> int:
        return self.options.concurrency or max(1, population)

    def default_threads(self, concurrency: int) -> int:
        return max(1, math.floor(self.options.num_cpus))

    def submit(self, spec: JobSpec) -> JobHandle:
        o = self.options
        python = o.python or sys.executable
        entrypoint = shlex.join([python, "-m", "lfads_lightning", *spec.args])
        stem = "".join(c if c.isalnum() else "-" for c in (spec.name or spec.run_id[:12]))
        submission_id = f"{o.job_name_prefix}-{stem}-{uuid.uuid4().hex[:8]}"
        env = {**o.env, **spec.thread_env(default=self.default_threads(1))}
        try:
            self._client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": env},
                metadata={k: str(v) for k, v in {**spec.labels, "run-id": spec.run_id}.items()},
                entrypoint_num_cpus=o.num_cpus,
                entrypoint_num_gpus=o.num_gpus or None,
                entrypoint_memory=o.memory_mb * 2**20 if o.memory_mb else None,
            )
        except Exception as err:
            raise RuntimeError(f"ray: submitting {submission_id} failed: {err}") from None
        self._last[submission_id] = JobState.PENDING
        return JobHandle(
            self.name,
            submission_id,
            spec.run_id,
            {"address": self.address, "submission_id": submission_id},
        )

    def _client_for(self, handle: JobHandle) -> Any:
        address = handle.info.get("address", self.address)
        if address == self.address:
            return self._client
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(address)

    def poll(self, handle: JobHandle) -> JobState:
        last = self._last.get(handle.job_id)
        if last is not None and last.terminal:
            return last
        try:
            status = self._client_for(handle).get_job_status(handle.job_id)
        except Exception as err:
            if "does not exist" in str(err) or "404" in str(err):
                state = JobState.FAILED  # removed from the cluster (or another cluster)
                self._last[handle.job_id] = state
                return state
            return last or JobState.PENDING  # transient trouble: keep the last state
        state = _STATES.get(str(getattr(status, "value", status)).upper(), JobState.UNKNOWN)
        self._last[handle.job_id] = state
        return state

    def describe(self, handle: JobHandle) -> str:
        state = self.poll(handle).value
        try:
            message = self._client_for(handle).get_job_info(handle.job_id).message or ""
        except Exception:
            message = ""
        return f"{state}: {message.strip().splitlines()[0]}" if message.strip() else state

    def cancel(self, handle: JobHandle) -> None:
        """stop_job; a no-op for a job that already ended."""
        try:
            self._client_for(handle).stop_job(handle.job_id)
        except Exception:  # already ended or gone
            return
