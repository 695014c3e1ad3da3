"""Kubernetes launcher: each worker job is a `batch/v1` Job running `lfads worker` in our image.

The controller runs anywhere that can reach the API server; pods report to the MLflow tracking
server. Poll and cancel work from the handle alone (namespace and Job name), so a restarted
controller adopts the Jobs of its predecessor. The `kubernetes` client is imported here only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from launchers.base import JobHandle, JobState, Launcher
from launchers.errors import LauncherError
from launchers.k8s_manifest import KubernetesOptions, default_threads, job_manifest, parse_options
from launchers.spec import JobSpec


def _client():
    try:
        import kubernetes
    except ModuleNotFoundError:  # pragma: no cover - a core dependency
        raise LauncherError(
            "launcher 'kubernetes' needs the package 'kubernetes'; pip install kubernetes"
        ) from None
    return kubernetes


def load_config(o: KubernetesOptions) -> Any:
    """An ApiClient from in-cluster config (inside a pod) or a kubeconfig file."""
    k8s = _client()
    in_cluster = o.in_cluster
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (
            o.kubeconfig or os.environ.get("KUBECONFIG")
        )
    cfg = k8s.client.Configuration()
    if in_cluster:
        try:
            k8s.config.load_incluster_config(client_configuration=cfg)
        except k8s.config.ConfigException as err:
            raise LauncherError(
                f"kubernetes: in-cluster config unavailable ({err}); set kubernetes.kubeconfig"
            ) from None
        return k8s.client.ApiClient(cfg)
    path = o.kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    path = path.split(os.pathsep)[0]
    if not Path(path).expanduser().is_file():
        raise LauncherError(
            f"kubernetes: no kubeconfig at {path}; set kubernetes.kubeconfig=PATH or KUBECONFIG, "
            "or run the controller inside the cluster"
        )
    try:
        k8s.config.load_kube_config(
            config_file=str(Path(path).expanduser()), context=o.context, client_configuration=cfg
        )
    except (k8s.config.ConfigException, ValueError) as err:
        raise LauncherError(f"kubernetes: cannot use kubeconfig {path}: {err}") from None
    return k8s.client.ApiClient(cfg)


class KubernetesLauncher(Launcher):
    name = "kubernetes"

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(options)
        self._api_client = load_config(self.options)
        k8s = _client()
        self.batch = k8s.client.BatchV1Api(self._api_client)
        self.core = k8s.client.CoreV1Api(self._api_client)
        self.ApiException = k8s.client.ApiException
        self._last: dict[str, JobState] = {}  # job id -> last state seen (API hiccups, deletes)
        self._cancelled: set[str] = set()
        self._live: dict[str, str] = {}  # submitted or adopted, not deleted: job id -> run id
        self._released: set[str] = set()  # jobs whose run the caller saw closed
        self._check_reachable()

    def _check_reachable(self) -> None:
        host = self._api_client.configuration.host
        try:
            self.core.list_namespaced_pod(self.options.namespace, limit=1, _request_timeout=10)
        except self.ApiException as err:
            if err.status == 404:
                raise LauncherError(
                    f"kubernetes: namespace {self.options.namespace!r} not found on {host}; "
                    "create it or set kubernetes.namespace"
                ) from None
            raise LauncherError(
                f"kubernetes: API server {host} refused access ({err.status} {err.reason}); "
                "check the kubeconfig's credentials and RBAC for Jobs in the namespace"
            ) from None
        except Exception as err:  # urllib3 connection errors
            raise LauncherError(
                f"kubernetes: cannot reach the API server at {host} ({type(err).__name__}); "
                "check kubernetes.kubeconfig / kubernetes.context and that the cluster is up"
            ) from None

    # ------------------------------------------------------------------ contract

    def default_concurrency(self, population: int) -> int:
        return max(1, population)  # the cluster's scheduler queues what does not fit

    def default_threads(self, concurrency: int) -> int:
        return default_threads(self.options)

    def submit(self, spec: JobSpec) -> JobHandle:
        manifest = self.manifest(spec)
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            self.batch.create_namespaced_job(ns, manifest)
        except self.ApiException as err:
            if err.status != 409:  # 409: submitted before (a retried submit): adopt it
                raise RuntimeError(
                    f"kubernetes: creating Job {ns}/{name} failed: {err.status} {err.reason}: "
                    f"{(err.body or '')[:500]}"
                ) from None
        job_id = f"{ns}/{name}"
        self._last[job_id] = JobState.PENDING
        self._live[job_id] = spec.run_id
        return JobHandle(self.name, job_id, spec.run_id, {"namespace": ns, "name": name})

    def adopt(self, handle: JobHandle) -> None:
        """A Job from before a controller restart: swept like the ones submitted here."""
        ns, name = _where(handle)
        self._live.setdefault(f"{ns}/{name}", handle.run_id)

    def release(self, handle: JobHandle) -> None:
        """Its run is closed: the pod exits right after, and `close` waits for that."""
        ns, name = _where(handle)
        self._released.add(f"{ns}/{name}")

    def submit_many(self, specs: list[JobSpec]) -> list[JobHandle]:
        self.sweep()  # each generation's submission also removes the last one's ended Jobs
        return super().submit_many(specs)

    def manifest(self, spec: JobSpec) -> dict:
        """The Job for a spec, labelled from the spec's labels (PBT run, member, generation)."""
        return job_manifest(self.options, spec)

    def poll(self, handle: JobHandle) -> JobState:
        ns, name = _where(handle)
        job_id = f"{ns}/{name}"
        last = self._last.get(job_id)
        if last is not None and last.terminal:
            return last
        try:
            job = self.batch.read_namespaced_job_status(name, ns, _request_timeout=10)
        except self.ApiException as err:
            if err.status == 404:  # deleted by us (cancel) or from outside
                state = JobState.CANCELLED if job_id in self._cancelled else JobState.FAILED
                self._last[job_id] = state
                return state
            return last or JobState.PENDING  # transient API trouble: keep the last state
        except Exception:  # connection errors: the same
            return last or JobState.PENDING
        state = self._job_state(job, ns, name)
        self._last[job_id] = state
        if state.terminal and self.options.delete_finished:
            self._delete(ns, name)
            self._live.pop(job_id, None)
        return state

    def sweep(self, wait: float = 0.0) -> None:
        """Delete the submitted Jobs that have ended. The PBT controller reads a member's outcome
        from its run and may never poll its Job again, so the launcher cleans up itself. With
        `wait`, released Jobs (their run is closed) get that long to end; other Jobs are left
        running (a resumed controller adopts them)."""
        if not self.options.delete_finished:
            return
        deadline = time.monotonic() + wait
        while self._live:
            waiting = False
            for job_id, run_id in list(self._live.items()):
                ns, _, name = job_id.partition("/")
                handle = JobHandle(self.name, job_id, run_id, {"namespace": ns, "name": name})
                if not self.poll(handle).terminal:
                    waiting = waiting or job_id in self._released
            if not wait or not waiting or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _job_state(self, job: Any, ns: str, name: str) -> JobState:
        """Map a Job's status: conditions first, then pod counts; never UNKNOWN."""
        status = job.status
        for cond in status.conditions or []:
            if cond.status == "True" and cond.type == "Complete":
                return JobState.SUCCEEDED
            if cond.status == "True" and cond.type == "Failed":
                return JobState.FAILED
        if (status.succeeded or 0) >= (job.spec.completions or 1):
            return JobState.SUCCEEDED
        if (status.failed or 0) > (job.spec.backoff_limit or 0) and not status.active:
            return JobState.FAILED
        if job.metadata.deletion_timestamp is not None:
            return JobState.CANCELLED if f"{ns}/{name}" in self._cancelled else JobState.FAILED
        if status.active:
            try:
                pods = self.core.list_namespaced_pod(
                    ns, label_selector=f"job-name={name}", _request_timeout=10
                ).items
            except Exception:
                return JobState.RUNNING
            if any(p.status.phase == "Running" for p in pods):
                return JobState.RUNNING
        return JobState.PENDING

    def cancel(self, handle: JobHandle) -> None:
        ns, name = _where(handle)
        job_id = f"{ns}/{name}"
        last = self._last.get(job_id)
        if last is None or not last.terminal:
            self._cancelled.add(job_id)
            self._last[job_id] = JobState.CANCELLED
        self._delete(ns, name)

    def _delete(self, ns: str, name: str) -> None:
        """Delete the Job and (in the background, by the garbage collector) its pods."""
        try:
            self.batch.delete_namespaced_job(
                name, ns, propagation_policy="Background", _request_timeout=10
            )
        except self.ApiException as err:
            if err.status != 404:
                print(f"lfads: deleting Job {ns}/{name} failed: {err.reason}", file=sys.stderr)

    def close(self) -> None:
        self.sweep(wait=30.0)
        self._api_client.close()


def _where(handle: JobHandle) -> tuple[str, str]:
    ns = handle.info.get("namespace")
    name = handle.info.get("name")
    if not (ns and name):
        ns, _, name = handle.job_id.partition("/")
    return str(ns), str(name)
