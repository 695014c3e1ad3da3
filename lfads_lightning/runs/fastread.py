"""Read-only access to a tracking store without importing MLflow, for the read commands.

`import mlflow` plus opening a sqlite store through SQLAlchemy costs 5-10 s on an idle 2-core
machine and over a minute on a busy one; `lfads pbt status` and the "is this run id known?"
check need none of it. Here runs are read straight from MLflow's sqlite tables (stdlib sqlite3,
read-only) or from a tracking server's REST API (stdlib urllib), as small objects shaped like
`mlflow.entities.Run` (`run.info.run_id/status/start_time/experiment_id`, `run.data.tags/
metrics/params` as dicts), so `runs.schema.member_from_run` reads them unchanged.

Other stores (file:, databricks, other databases) are not `supported`: callers use MlflowClient.
Anything unexpected raises `FastReadUnavailable`, and callers fall back to MlflowClient.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FastReadUnavailable(Exception):
    """The store could not be read this way; use MlflowClient instead."""


@dataclass
class RunInfo:
    run_id: str
    experiment_id: str
    status: str
    start_time: int | None
    lifecycle_stage: str = "active"


@dataclass
class RunData:
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class RunView:
    info: RunInfo
    data: RunData


def supported(uri: str) -> bool:
    return uri.startswith(("sqlite:///", "http://", "https://"))


def get_run(uri: str, run_id: str) -> RunView | None:
    """The run (tags, latest metrics, params), or None if the store has no such run."""
    if uri.startswith("sqlite:///"):
        return _sqlite_get_run(uri, run_id)
    if uri.startswith(("http://", "https://")):
        return _http_get_run(uri, run_id)
    raise FastReadUnavailable(uri)


def child_runs(
    uri: str, parent: RunView, param_keys: list[str] | tuple[str, ...] = ()
) -> list[RunView]:
    """Every active run whose mlflow.parentRunId is `parent`: tags, latest metrics, and of the
    params only `param_keys` (the searched hyperparameters status shows; the rest is not read)."""
    if uri.startswith("sqlite:///"):
        return _sqlite_children(uri, parent.info.run_id, tuple(param_keys))
    if uri.startswith(("http://", "https://")):
        return _http_children(uri, parent)
    raise FastReadUnavailable(uri)


# ---------------------------------------------------------------------------------- sqlite


def _connect(uri: str) -> sqlite3.Connection:
    path = Path(uri[len("sqlite:///") :])
    if not path.is_file():
        raise FastReadUnavailable(f"no database at {path}")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        con.execute("SELECT run_uuid, status, start_time, experiment_id FROM runs LIMIT 0")
    except sqlite3.Error as err:
        raise FastReadUnavailable(str(err)) from None
    return con


def _metric(value: float, is_nan: Any) -> float:
    return math.nan if is_nan else float(value)


def _sqlite_get_run(uri: str, run_id: str) -> RunView | None:
    con = _connect(uri)
    try:
        row = con.execute(
            "SELECT run_uuid, experiment_id, status, start_time, lifecycle_stage FROM runs "
            "WHERE run_uuid = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        data = RunData(
            tags=dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,))),
            metrics={
                k: _metric(v, nan)
                for k, v, nan in con.execute(
                    "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
                )
            },
            params=dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,))),
        )
    except sqlite3.Error as err:
        raise FastReadUnavailable(str(err)) from None
    finally:
        con.close()
    return RunView(RunInfo(row[0], str(row[1]), row[2], row[3], row[4] or "active"), data)


def _sqlite_children(uri: str, parent_id: str, param_keys: tuple[str, ...]) -> list[RunView]:
    con = _connect(uri)
    children = (
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'mlflow.parentRunId' AND t.value = ? AND r.lifecycle_stage = 'active'"
    )
    try:
        runs = {
            run_id: RunView(RunInfo(run_id, str(exp), status, start), RunData())
            for run_id, exp, status, start in con.execute(
                "SELECT run_uuid, experiment_id, status, start_time FROM runs "
                f"WHERE run_uuid IN ({children})",
                (parent_id,),
            )
        }
        for run_id, key, value in con.execute(
            f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({children})", (parent_id,)
        ):
            runs[run_id].data.tags[key] = value
        for run_id, key, value, nan in con.execute(
            "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
            f"WHERE run_uuid IN ({children})",
            (parent_id,),
        ):
            runs[run_id].data.metrics[key] = _metric(value, nan)
        wanted = ",".join("?" * len(param_keys))
        for run_id, key, value in (
            con.execute(
                f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({children}) "
                f"AND key IN ({wanted})",
                (parent_id, *param_keys),
            )
            if param_keys
            else ()
        ):
            runs[run_id].data.params[key] = value
    except sqlite3.Error as err:
        raise FastReadUnavailable(str(err)) from None
    finally:
        con.close()
    return list(runs.values())


# ------------------------------------------------------------------------------------ http


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = (
        os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    )
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    return headers


def _request(uri: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
    url = uri.rstrip("/") + "/api/2.0/mlflow/" + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=_headers())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            payload = json.loads(err.read() or b"{}")
        except ValueError:
            payload = {}
        if payload.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(path) from None
        raise FastReadUnavailable(f"HTTP {err.code} from {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise FastReadUnavailable(str(err)) from None


def _from_json(run: dict) -> RunView:
    info, data = run.get("info", {}), run.get("data", {})
    start = info.get("start_time")
    return RunView(
        RunInfo(
            info.get("run_id") or info.get("run_uuid"),
            str(info.get("experiment_id")),
            info.get("status", ""),
            int(start) if start is not None else None,
            info.get("lifecycle_stage", "active"),
        ),
        RunData(
            tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
            metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])},
            params={p["key"]: p.get("value", "") for p in data.get("params", [])},
        ),
    )


def _http_get_run(uri: str, run_id: str) -> RunView | None:
    try:
        return _from_json(_request(uri, "runs/get", params={"run_id": run_id})["run"])
    except LookupError:
        return None


def _http_children(uri: str, parent: RunView) -> list[RunView]:
    runs, token = [], None
    while True:
        body = {
            "experiment_ids": [parent.info.experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            "max_results": 1000,
            **({"page_token": token} if token else {}),
        }
        page = _request(uri, "runs/search", body=body)
        runs += [_from_json(r) for r in page.get("runs", [])]
        token = page.get("next_page_token")
        if not token:
            return runs
