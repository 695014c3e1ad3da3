"""MLflow tracking: where runs go, checking the store is usable, and run lifecycle helpers.

With no configuration runs go to a sqlite file in the working directory (no server needed);
any MLFLOW_TRACKING_URI works. The store is checked *before* a run is created so that an
unreachable server is a one-line error, not minutes of client retries.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

from lfads_lightning.errors import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DB_NAME = "mlflow.db"
TAG_PREFIX = "lfads."
CONFIG_ARTIFACT = "config.yaml"


def resolve_uri(configured: str | None = None) -> str:
    """config value > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_NAME}"


def _check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(
                    f"MLflow tracking server {uri} answered HTTP {resp.status} on /health; check the server"
                )
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or set "
            f"MLFLOW_TRACKING_URI / tracking.uri to a reachable server"
        ) from None


def _check_sqlite(uri: str) -> None:
    path = Path(uri[len("sqlite:///") :])
    if not path.parent.is_dir():
        raise TrackingError(
            f"tracking database directory {path.parent} does not exist; create it or change tracking.uri"
        )
    if not os.access(path.parent, os.W_OK):
        raise TrackingError(
            f"tracking database directory {path.parent} is not writable; change tracking.uri"
        )


def _check_file_store(uri: str) -> None:
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    raise TrackingError(
        f"the MLflow file store ({uri}) is switched off in MLflow 3; use a sqlite database "
        f"instead, e.g. --tracking-uri sqlite:///{Path(path).expanduser().resolve().parent / DEFAULT_DB_NAME}"
    )


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def store_exists(uri: str) -> bool:
    """False only for a sqlite store whose file does not exist (servers are assumed to)."""
    path = sqlite_path(uri)
    return path is None or path.exists()


@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of an sqlite store across processes: MLflow creates (migrates)
    the schema on first use, and two processes doing that at once leave an unusable database."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # read-only directory: nothing can be created there anyway
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _first_use_sqlite(uri: str) -> None:
    """Open (and on first use create) an sqlite store under the lock. A database this call
    created but could not finish migrating is removed, never left half-made."""
    path = sqlite_path(uri)
    assert path is not None
    with _schema_lock(uri):
        existed = path.exists()
        try:
            client(uri).search_experiments(max_results=1)
        except Exception:
            if not existed:
                _dispose_engines(str(path))
                for leftover in (path, *(path.with_name(path.name + s) for s in _SIDECARS)):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
            raise


_SIDECARS = ("-journal", "-wal", "-shm")


def _dispose_engines(fragment: str) -> None:
    """Close MLflow's cached SQLAlchemy engine of a database file before it is removed."""
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for key in [k for k in SqlAlchemyStore._engine_map if fragment in k]:
            SqlAlchemyStore._engine_map.pop(key).dispose()


def require_existing(uri: str) -> None:
    """Read-only commands: a sqlite store that does not exist is an error, never created."""
    path = sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if path is not None and not path.exists():
        raise TrackingError(
            f"tracking database {path} does not exist (nothing was created); pass "
            f"--tracking-uri or set MLFLOW_TRACKING_URI to the store that holds the run"
        )


def check_store(uri: str, timeout: float = 5.0, create: bool = True) -> None:
    """Fail fast with a TrackingError if runs cannot be logged to `uri`; create the schema once.

    Creating the sqlite schema here, under a file lock next to the database (mlflow.db.lock),
    matters: several processes migrating it at the same time leave it unusable. `create=False` (the
    read-only commands) refuses a sqlite file that does not exist instead of creating it.
    """
    if uri.startswith(("http://", "https://")):
        _check_http(uri, timeout)
    elif uri.startswith("file:") or "://" not in uri:
        _check_file_store(uri)
    elif uri.startswith("sqlite:///"):
        path = sqlite_path(uri)
        assert path is not None
        if not create:
            require_existing(uri)
        _check_sqlite(uri)
    try:
        if uri.startswith("sqlite:///") and create:
            _first_use_sqlite(uri)
        else:
            client(uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend failure is reported the same way
        raise TrackingError(f"cannot use MLflow tracking store {uri}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """Get or create an experiment; tolerate another process creating it first."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment '{name}' is deleted; restore it or choose tracking.experiment"
            )
        return exp.experiment_id
    artifact_location = None
    uri = mlflow_client.tracking_uri
    if uri.startswith("sqlite:///"):
        # Next to the database rather than MLflow's default ./mlruns of whatever the cwd is.
        artifact_location = (
            (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        )
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - lost a creation race
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_params(mlflow_client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    mlflow_client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0
) -> None:
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step) for k, v in sorted(values.items()) if math.isfinite(float(v))
    ]
    for i in range(0, len(items), 500):
        mlflow_client.log_batch(run_id, metrics=items[i : i + 500])


def create_config_run(
    cfg: Any,
    uri: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    extra_params: dict[str, Any] | None = None,
) -> str:
    """A new MLflow run holding the flattened config as params and the resolved config as YAML.

    Tags are given without the `lfads.` prefix. A run whose setup fails is marked FAILED.
    """
    from lfads_lightning.config import dump_yaml, flatten, to_dict

    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, cfg.tracking.experiment)
    all_tags = {f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(exp_id, run_name=cfg.tracking.run_name, tags=all_tags)
    run_id = run.info.run_id
    try:
        log_params(mlflow_client, run_id, {**flatten(to_dict(cfg)), **(extra_params or {})})
        mlflow_client.log_text(run_id, dump_yaml(cfg), CONFIG_ARTIFACT)
    except Exception:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    return run_id
