"""`lfads ui`: the MLflow UI on the project's tracking store (by default ./mlflow.db).

It runs `mlflow server` in the foreground, bound to loopback unless told otherwise, with one
worker and MLflow's job execution off (a UI for one person needs neither: 0.5 GB instead of
about 3 GB). Artifacts of the sqlite default live in ./mlartifacts next to the database.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lfads_lightning.errors import ConfigError, TrackingError


def server_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line for a tracking URI (sqlite/file or http)."""
    if uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"{uri} is already an MLflow server: open it in a browser instead of `lfads ui`"
        )
    script = Path(sys.executable).parent / "mlflow"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    cmd += ["--workers", "1"]
    if uri.startswith("sqlite:///"):
        artifacts = Path(uri[len("sqlite:///") :]).parent / "mlartifacts"
        cmd += ["--default-artifact-root", artifacts.resolve().as_uri()]
    return cmd


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_ui(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve the UI until interrupted; returns the server's exit code."""
    from lfads_lightning.runs import tracking

    uri = tracking.resolve_uri(tracking_uri)
    cmd = server_command(uri, host, port)
    tracking.check_store(uri)
    if not _port_free(host, port):
        raise TrackingError(f"port {port} on {host} is in use; pick another with --port")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"lfads: MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C stops it)", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env)
    # SIGTERM (a service manager, `kill`) stops the server too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0


def cmd_ui(args: argparse.Namespace) -> int:
    return run_ui(args.tracking_uri, args.host, args.port)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lfads_lightning.cli.common import TRACKING_URI_HELP_NO_CONFIG, add_command

    ui = add_command(
        sub,
        "ui",
        "start the MLflow UI on the project's tracking store",
        "Run the MLflow UI (`mlflow server`, one worker) on the tracking store in the\n"
        "foreground, bound to loopback unless --host says otherwise; Ctrl-C stops it.",
        ["lfads ui", "lfads ui --port 5001 --tracking-uri sqlite:///$PWD/mlflow.db"],
        "docs/ui.md",
    )
    ui.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP_NO_CONFIG)
    ui.add_argument(
        "--host", default="127.0.0.1", help="bind address (loopback: only this machine)"
    )
    ui.add_argument("--port", type=int, default=5000, help="port to serve the UI on")
    ui.set_defaults(func=cmd_ui)
