"""The member-run schema (runs/schema.py): allowed state edges, tags round trip, hparams from
params, and the fault-point syntax (faults.py). A real sqlite MLflow store, no training."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from lfads_lightning import faults
from lfads_lightning.config import LfadsConfig
from lfads_lightning.pbt.config import with_hparams
from lfads_lightning.runs import schema, tracking
from lfads_lightning.runs.schema import (
    IllegalTransition,
    MemberTags,
    State,
    check_transition,
    is_finite,
    mark_submitted,
    member_from_run,
    record_fitness,
    set_state,
)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    return uri, MlflowClient(uri)


def _member(uri: str, hparams: dict[str, float] | None = None) -> str:
    hparams = hparams or {"train.lr": 1.25e-3, "loss.kl_ic_scale": 3.5e-5}
    tags = MemberTags(2, 1, 7, attempt=1, copied_from="abc", copied_from_member=0, hparams=hparams)
    return tracking.create_config_run(
        with_hparams(LfadsConfig(), hparams), uri, tags.to_tags(), extra_params=tags.to_params()
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [("queued", "running"), ("queued", "failed"), ("running", "finished"),
     ("running", "failed"), ("finished", "exploited"), ("queued", "stopped"),
     ("running", "stopped")],
)  # fmt: skip
def test_allowed_edges(old, new):
    assert check_transition(old, new) is True
    assert check_transition(new, new) is False  # re-writing the current state: no-op


@pytest.mark.parametrize(
    ("old", "new"),
    [("finished", "failed"), ("finished", "running"), ("failed", "running"),
     ("failed", "finished"), ("exploited", "finished"), ("running", "queued"),
     ("queued", "finished"), ("stopped", "running"), ("stopped", "failed"),
     ("finished", "stopped"), ("failed", "stopped")],
)  # fmt: skip
def test_illegal_edges_raise(old, new):
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_tags_round_trip_and_hparams_come_from_params(store):
    uri, client = store
    run = client.get_run(_member(uri))
    t = MemberTags.from_run(run, ["train.lr", "loss.kl_ic_scale"])
    assert (t.member, t.generation, t.attempt, t.target_epoch) == (2, 1, 1, 7)
    assert (t.copied_from, t.copied_from_member) == ("abc", 0)
    assert t.hparams == {"train.lr": 1.25e-3, "loss.kl_ic_scale": 3.5e-5}
    assert run.data.params["pbt.member"] == "2"
    m = member_from_run(run, ["train.lr"])
    assert m.state is State.QUEUED and m.hparams == {"train.lr": 1.25e-3}


def test_state_writes_follow_the_edges(store):
    uri, client = store
    run_id = _member(uri)
    mark_submitted(client, run_id)
    set_state(client, run_id, State.RUNNING)  # the worker after the controller: no-op
    assert record_fitness(client, run_id, 0.5, step=1)
    set_state(client, run_id, State.FINISHED)
    mark_submitted(client, run_id)  # a late submit bookkeeping write does not move it back
    schema.mark_failed(uri, run_id, "too late")  # a finished run never becomes failed
    assert client.get_run(run_id).data.tags["lfads.state"] == "finished"
    with pytest.raises(IllegalTransition):
        set_state(client, run_id, State.RUNNING)
    set_state(client, run_id, State.EXPLOITED)
    assert client.get_run(run_id).data.tags["lfads.state"] == "exploited"


def test_a_stopped_member_stays_stopped_when_its_worker_is_killed(store):
    uri, client = store
    run_id = _member(uri)
    mark_submitted(client, run_id)
    assert schema.mark_stopped(client, run_id)
    # The worker's SIGTERM handling closes the run but cannot call it failed.
    schema.mark_failed(uri, run_id, "worker stopped by SIGTERM", status="KILLED")
    run = client.get_run(run_id)
    assert (run.data.tags["lfads.state"], run.info.status) == ("stopped", "KILLED")
    assert not schema.mark_stopped(client, run_id)  # already final
    assert not member_from_run(run).done  # a resumed run redoes it


def test_parent_states_follow_their_edges_and_set_the_mlflow_status(store):
    uri, client = store
    exp = client.create_experiment("p")
    parent = client.create_run(exp, tags={"lfads.kind": "pbt", "lfads.state": "running"})
    run_id = parent.info.run_id
    for state, status in (("interrupted", "KILLED"), ("running", "RUNNING"), ("stopped", "KILLED")):
        schema.set_parent_state(client, run_id, state)
        run = client.get_run(run_id)
        assert (run.data.tags["lfads.state"], run.info.status) == (state, status)
    with pytest.raises(IllegalTransition):  # stopped is final
        schema.set_parent_state(client, run_id, "running")


def test_the_checkpoint_to_sample_is_the_tagged_one_else_best_else_last(store):
    uri, client = store
    run_id = _member(uri)
    both = ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    assert schema.best_checkpoint(client.get_run(run_id), both) == "checkpoints/best.ckpt"
    assert schema.best_checkpoint(client.get_run(run_id), both[1:]) == "checkpoints/last.ckpt"
    assert schema.best_checkpoint(client.get_run(run_id), []) is None
    schema.record_best_checkpoint(client, run_id, "checkpoints/last.ckpt")
    assert schema.best_checkpoint(client.get_run(run_id), both) == "checkpoints/last.ckpt"


def test_nan_fitness_is_recorded_but_not_usable(store):
    uri, client = store
    run_id = _member(uri)
    assert not record_fitness(client, run_id, math.nan, step=1)
    assert client.get_run(run_id).data.tags["lfads.fitness"] == "nan"
    assert not is_finite(math.inf) and not is_finite(None) and is_finite(0.0)


def test_fault_points(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.point("member.start", member=0) is None
    monkeypatch.setenv(
        faults.ENV, "member.fitness[member=1|2,attempt=0]=nan; member.start[member=3]=crash"
    )
    assert faults.point("member.fitness", member=2, generation=0, attempt=0) == "nan"
    assert faults.point("member.fitness", member=2, generation=0, attempt=1) is None
    assert faults.point("member.start", member=1) is None
    with pytest.raises(RuntimeError, match="injected crash"):
        faults.point("member.start", member=3, attempt=5)


def test_the_oom_fault_stops_at_its_cap_without_a_memory_limit(monkeypatch):
    """Where no limit kills it (no pod), `oom` gives up at the cap instead of eating the host."""
    monkeypatch.setattr(faults, "OOM_CAP_BYTES", 96 << 20)
    monkeypatch.setenv(faults.ENV, "member.start[member=1]=oom")
    with pytest.raises(MemoryError, match=f"injected oom: {96 << 20} bytes"):
        faults.point("member.start", member=1)


def test_a_malformed_fault_entry_is_an_error(monkeypatch):
    monkeypatch.setenv(faults.ENV, "member.begin=crash")
    with pytest.raises(ValueError, match="cannot parse"):
        faults.point("member.start")
