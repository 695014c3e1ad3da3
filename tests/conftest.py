"""Shared pytest fixtures. Keep fixtures explicit: nothing here is autouse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import TINY_DATA, lfads
from .mlflow_server import mlflow_server


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh per-test MLflow sqlite tracking URI (the database is created on first use)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`http://127.0.0.1:PORT` of a real `mlflow server` shared by the whole test session.

    Temporary sqlite backend, artifacts served over HTTP from a temporary directory; the server
    and its children are killed at the end of the session.
    """
    workdir = tmp_path_factory.mktemp("mlflow-server")
    t0 = time.monotonic()
    with mlflow_server(workdir) as uri:
        print(
            f"\nmlflow server {uri} healthy after {time.monotonic() - t0:.1f} s (state in {workdir})"
        )
        yield uri


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding tiny.h5 (TINY_DATA, seed 5) for the end-to-end PBT and member tests."""
    root = tmp_path_factory.mktemp("tinydata")
    proc = lfads("data", "synth", "lorenz", "tiny.h5", "--seed", "5", *TINY_DATA, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root
