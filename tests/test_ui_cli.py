"""`lfads ui` argument handling that needs no browser: the command it runs and its errors."""

from __future__ import annotations

import socket
from pathlib import Path

from lfads_lightning.cli import main
from lfads_lightning.cli.server import server_command


def test_server_command_for_the_sqlite_default(tmp_path):
    cmd = server_command(f"sqlite:///{tmp_path / 'mlflow.db'}", "127.0.0.1", 5123)
    assert cmd[cmd.index("server") :] == [
        "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--host", "127.0.0.1",
        "--port", "5123",
        "--workers", "1",
        "--default-artifact-root", (tmp_path / "mlartifacts").as_uri(),
    ]  # fmt: skip
    assert Path(cmd[0]).name == "mlflow" or cmd[1:3] == ["-m", "mlflow"]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "already an MLflow server" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 3
    err = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]
    assert err == [f"error: port {port} on 127.0.0.1 is in use; pick another with --port"]
    missing = tmp_path / "nope" / "mlflow.db"
    assert main(["ui", "--tracking-uri", f"sqlite:///{missing}"]) == 3
    assert "does not exist" in capsys.readouterr().err
