"""TEST STAND-IN for the kubelet (the one fake part of the `k8s` test cluster).

There is no container runtime on the test machine, so this process plays the node agent: it
registers a Node, and for every pod the real scheduler binds to it, runs the first container's
command + args as a local process (the image is ignored), with the pod's env resolved the way the
kubelet does (plain values, Secret keys read from the API, pod fields). It reports the pod's phase
and exit code, so the real Job controller marks Jobs Complete or Failed. A pod being deleted (its
Job deleted, Background propagation) has its process group killed, then is removed with grace 0.
Not emulated: images, resource limits and the securityContext (processes run as this user);
those are checked by the API server's validation and by the manifest tests instead.

Run: python fake_kubelet.py --kubeconfig PATH --node NAME --log-dir DIR
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

# The kubelet's own environment must not leak into pods: they get what their manifest says.
_HIDDEN = ("MLFLOW_", "LFADS_", "KUBECONFIG", "OMP_", "MKL_", "OPENBLAS_")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class FakeKubelet:
    def __init__(self, api: client.CoreV1Api, node: str, log_dir: Path, cpu: str, memory: str):
        self.api, self.node, self.log_dir = api, node, log_dir
        self.capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
        self.procs: dict[str, subprocess.Popen] = {}  # pod uid -> process
        self.started: set[str] = set()
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ the node

    def register(self) -> None:
        body = {"metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}}}
        try:
            self.api.create_node(body)
        except client.ApiException as err:
            if err.status != 409:
                raise
        # The API server taints new nodes not-ready; the node lifecycle controller (not run
        # here) would lift it once the kubelet reports Ready. Lift it ourselves.
        self.api.patch_node(self.node, {"spec": {"taints": []}})
        self.heartbeat()
        threading.Thread(target=self._beat_forever, daemon=True).start()

    def heartbeat(self) -> None:
        t = now()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "fake kubelet (local processes)",
                 "lastHeartbeatTime": t, "lastTransitionTime": t}  # fmt: skip
        status = {"capacity": self.capacity, "allocatable": self.capacity, "conditions": [ready]}
        self.api.patch_node_status(self.node, {"status": status})

    def _beat_forever(self) -> None:
        while True:
            time.sleep(10)
            try:
                self.heartbeat()
            except Exception as err:  # keep beating through API hiccups
                print(f"heartbeat failed: {err}", flush=True)

    # ------------------------------------------------------------------ pods

    def resolve_env(self, pod: Any, container: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_HIDDEN)}
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from.secret_key_ref
            if ref is not None:
                try:
                    secret = self.api.read_namespaced_secret(ref.name, pod.metadata.namespace)
                    data = secret.data or {}
                    if ref.key in data:
                        env[var.name] = base64.b64decode(data[ref.key]).decode()
                    elif not ref.optional:
                        raise KeyError(f"key {ref.key} not in secret {ref.name}")
                except client.ApiException as err:
                    if err.status != 404 or not ref.optional:
                        raise KeyError(f"secret {ref.name} not readable: {err.reason}") from None
                continue
            field = var.value_from.field_ref
            if field is not None:
                env[var.name] = {
                    "metadata.name": pod.metadata.name,
                    "metadata.namespace": pod.metadata.namespace,
                    "spec.nodeName": self.node,
                }.get(field.field_path, "")
        return env

    def set_status(self, pod: Any, phase: str, code: int | None = None, reason: str = "") -> None:
        c = pod.spec.containers[0]
        if code is None:
            state = {"running": {"startedAt": now()}}
        else:
            state = {"terminated": {"exitCode": code, "reason": reason or
                                    ("Completed" if code == 0 else "Error"),
                                    "startedAt": now(), "finishedAt": now()}}  # fmt: skip
        cstatus = {"name": c.name, "image": c.image, "imageID": "", "ready": phase == "Running",
                   "restartCount": 0, "state": state}  # fmt: skip
        status = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "startTime": now(), "containerStatuses": [cstatus]}  # fmt: skip
        try:
            self.api.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}
            )
        except client.ApiException as err:
            if err.status != 404:
                raise

    def run_pod(self, pod: Any) -> None:
        c = pod.spec.containers[0]
        argv = list(c.command or []) + list(c.args or [])
        name = f"{pod.metadata.namespace}_{pod.metadata.name}"
        try:
            env = self.resolve_env(pod, c)
        except KeyError as err:  # the kubelet's CreateContainerConfigError, simplified
            print(f"pod {name}: {err}", flush=True)
            self.set_status(pod, "Failed", 1, "CreateContainerConfigError")
            return
        cwd = c.working_dir if c.working_dir and Path(c.working_dir).is_dir() else str(self.log_dir)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        with self.lock:
            self.procs[pod.metadata.uid] = proc
        self.set_status(pod, "Running")
        code = proc.wait()
        with self.lock:
            self.procs.pop(pod.metadata.uid, None)
        code = code if code >= 0 else 128 - code  # killed by a signal: 128 + signal number
        print(f"pod {name}: {argv[:4]}... exited {code}", flush=True)
        self.set_status(pod, "Succeeded" if code == 0 else "Failed", code)

    def kill_pod(self, pod: Any) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after the grace period), then remove the pod."""
        with self.lock:
            proc = self.procs.get(pod.metadata.uid)
        if proc is not None and proc.poll() is None:
            grace = pod.metadata.deletion_grace_period_seconds or 30
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=min(grace, 10))
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            self.api.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
            )
        except client.ApiException as err:
            if err.status != 404:
                print(f"deleting pod {pod.metadata.name}: {err.reason}", flush=True)

    def handle(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        if kind == "DELETED":
            return
        if pod.metadata.deletion_timestamp is not None:
            with self.lock:
                if ("kill", uid) in self.started:
                    return
                self.started.add(("kill", uid))  # type: ignore[arg-type]
            threading.Thread(target=self.kill_pod, args=(pod,), daemon=True).start()
            return
        if pod.status.phase == "Pending" and uid not in self.started:
            self.started.add(uid)
            threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()

    def serve(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                for ev in watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces, field_selector=selector,
                    timeout_seconds=300,
                ):  # fmt: skip
                    self.handle(ev["type"], ev["object"])
            except Exception as err:  # watch expired or API restarted: list again
                print(f"watch ended: {err}; restarting", flush=True)
                time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--node", default="lfads-test-node")
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--cpu", default="8")
    ap.add_argument("--memory", default="16Gi")
    args = ap.parse_args()
    config.load_kube_config(config_file=args.kubeconfig)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    kubelet = FakeKubelet(client.CoreV1Api(), args.node, log_dir, args.cpu, args.memory)
    kubelet.register()
    print(f"fake kubelet: node {args.node} ready", flush=True)
    kubelet.serve()


if __name__ == "__main__":
    main()
