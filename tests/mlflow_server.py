"""Start a real `mlflow server` on loopback for tests.

The server gets a temporary sqlite backend and serves artifacts over HTTP from a temporary
directory (`--artifacts-destination`, i.e. `mlflow-artifacts:/` URIs, as remote workers see it).
It runs with one worker and job execution disabled (about 4 s to start on an idle machine, 0.5 GB), in its own
process group so that teardown also ends its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# Generous: on a loaded 2-core machine importing MLflow alone can take a minute.
STARTUP_TIMEOUT_S = float(os.environ.get("LFADS_TEST_SERVER_TIMEOUT", "180"))


class MlflowServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def _log_tail(path: Path, start: int = 0, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):  # stray children of a dead leader
            os.killpg(proc.pid, signal.SIGKILL)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # workers left after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_server(
    workdir: Path, timeout: float = STARTUP_TIMEOUT_S, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Run `mlflow server` with its state under `workdir`; yield its `http://HOST:PORT` URI.
    `host`: the local address it binds (the k8s tests bind the pods' gateway address)."""
    workdir = Path(workdir)
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)

    for attempt in range(3):  # the port picked may be taken before the server binds it
        port = free_port()
        uri = f"http://{host}:{port}"
        cmd = [
            *_mlflow_command(), "server",
            "--host", host,
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(artifacts),
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            start = log.tell()
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        try:
            while not _healthy(uri):
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise MlflowServerError(
                        f"mlflow server at {uri} not healthy after {timeout:.0f} s; log tail:\n"
                        + _log_tail(log_path, start)
                    )
                time.sleep(0.2)
        except BaseException:
            _stop(proc)
            raise
        if proc.poll() is None:
            break
        tail = _log_tail(log_path, start)
        _stop(proc)
        if "address already in use" in tail.lower() and attempt < 2:
            continue
        raise MlflowServerError(
            f"mlflow server exited with code {proc.returncode} before answering /health; "
            f"log tail ({log_path}):\n{tail}"
        )

    try:
        yield uri
    finally:
        _stop(proc)
