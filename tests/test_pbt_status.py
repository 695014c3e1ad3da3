"""`lfads pbt status` and unknown-id answers read the store without MLflow (runs.fastread): the
same population as MlflowClient sees, for sqlite and for a tracking server."""

from __future__ import annotations

import json
import math
import time

import pytest

from lfads_lightning.pbt import experiment
from lfads_lightning.runs import fastread, tracking
from lfads_lightning.runs.schema import load_members, member_from_run, space_keys
from tests.helpers import lfads

SPACE = [{"key": "train.lr"}, {"key": "model.dropout_rate"}]


def _population(uri: str) -> str:
    """A parent and 3 members x 2 generations the way the controller tags them; member 2 of
    generation 1 copied member 0, one fitness is NaN, one run is deleted."""
    from mlflow.entities import Metric, Param

    tracking.check_store(uri)
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "status-test")
    parent = client.create_run(
        exp, tags={"lfads.kind": "pbt", "lfads.state": "running"}
    ).info.run_id
    client.log_batch(
        parent,
        params=[Param("pbt.population", "3"), Param("pbt.space", json.dumps(SPACE))],
    )
    now = int(time.time() * 1000)
    for g in range(2):
        for m in range(3):
            source = "" if g == 0 else ("0" if m == 2 else str(m))
            run = client.create_run(
                exp,
                tags={
                    "mlflow.parentRunId": parent,
                    "lfads.kind": "pbt_member",
                    "lfads.member": str(m),
                    "lfads.generation": str(g),
                    "lfads.attempt": "0",
                    "lfads.state": "finished",
                    "lfads.copied_from": "",
                    "lfads.copied_from_member": source,
                    "lfads.hparams": json.dumps(
                        {"train.lr": 1e-3 * (m + 1), "model.dropout_rate": 0.1}
                    ),
                    "lfads.job": json.dumps({"launcher": "local", "job_id": str(m)}),
                },
            )
            fitness = math.nan if (g, m) == (0, 1) else 0.5 - 0.1 * g + 0.01 * m
            params = [Param("train.lr", str(1e-3 * (m + 1))), Param("model.dropout_rate", "0.1")]
            client.log_batch(
                run.info.run_id, metrics=[Metric("pbt/fitness", fitness, now, 0)], params=params
            )
            client.set_terminated(run.info.run_id, "FINISHED")
    gone = client.create_run(exp, tags={"mlflow.parentRunId": parent, "lfads.member": "9"})
    client.delete_run(gone.info.run_id)
    return parent


def _key(m):
    fitness = None if m.fitness is None or math.isnan(m.fitness) else round(m.fitness, 9)
    return (m.run_id, m.member, m.generation, m.state, m.mlflow_status, fitness,
            m.copied_from_member, m.hparams, m.job, m.start_time)  # fmt: skip


def _check_same_as_mlflow(uri: str) -> None:
    parent = _population(uri)
    client = tracking.client(uri)
    run = fastread.get_run(uri, parent)
    assert run is not None and run.data.params["pbt.population"] == "3"
    assert run.data.tags["lfads.kind"] == "pbt"
    keys = space_keys(run)
    fast = [
        member_from_run(r, keys)
        for r in fastread.child_runs(uri, run, keys)
        if "lfads.member" in r.data.tags
    ]
    slow = load_members(client, parent)
    assert sorted(map(_key, fast)) == sorted(map(_key, slow))
    assert len(fast) == 6
    text = experiment.status_at(uri, parent, "all")
    assert text == experiment.status(client, parent, "all")
    assert "copied from 0" in text and "continued" in text
    # the searched hyperparameters come from the members' params, on both paths
    assert {m.hparams["train.lr"] for m in fast} == {1e-3, 2e-3, 3e-3}
    assert fastread.get_run(uri, "0" * 32) is None
    with pytest.raises(experiment.LfadsError, match="not found"):
        experiment.status_at(uri, "0" * 32)


def test_sqlite_fast_path_matches_mlflow(tracking_uri):
    _check_same_as_mlflow(tracking_uri)


@pytest.mark.server
def test_server_fast_path_matches_mlflow(mlflow_server_uri):
    _check_same_as_mlflow(mlflow_server_uri)


def test_unknown_ids_answer_at_once(tmp_path, tracking_uri):
    tracking.check_store(tracking_uri)
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    for args in (("pbt", "status", "BADID"), ("sample", "--run", "BADID"), ("evaluate", "BADID")):
        start = time.monotonic()
        proc = lfads(*args, cwd=tmp_path, env=env)
        assert proc.returncode != 0 and "BADID not found" in proc.stderr
        assert time.monotonic() - start < 30  # MLflow is never imported (seconds, not minutes)
    missing = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"}
    proc = lfads("pbt", "status", "BADID", cwd=tmp_path, env=missing)
    assert proc.returncode == 3 and "does not exist (nothing was created)" in proc.stderr
    assert not (tmp_path / "none").exists()
