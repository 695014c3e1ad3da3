"""`lfads pbt --launcher local` end to end, with real controller and worker processes.

Faults are injected at named points through one environment variable, LFADS_FAULTS
(lfads_lightning/faults.py): the worker really crashes, exits, hangs or reports NaN, and the
controller is really SIGKILLed; nothing is mocked.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from .helpers import TINY_MODEL, lfads


def pbt_config(population: int = 4, generations: int = 3, **pbt) -> dict:
    return {
        "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
        "model": TINY_MODEL,
        "loss": {"kl_increase_epoch": 1, "l2_increase_epoch": 1},
        "output": {"n_samples": 2, "figures": False},
        "tracking": {"experiment": "pbt"},
        "pbt": {
            "population": population,
            "epochs_per_generation": 1,
            "burn_in": 1,
            "max_generations": generations,
            "concurrency": 2,
            "retries": 1,
            "patience": 10,
            **pbt,
        },
    }


def project(tmp_path: Path, data_dir: Path, config: dict) -> tuple[Path, str]:
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(config))
    return tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}"


def pbt_killed_at(kill_at: str, *args: str, cwd: Path, env: dict | None = None) -> None:
    """`lfads pbt ARGS` with the controller SIGKILLed at a kill point: `kill_at` is
    "POINT:GENERATION", e.g. "after_submit:1" (the fault point controller.after_submit)."""
    point, _, generation = kill_at.partition(":")
    faults = f"controller.{point}[generation={generation}]=kill"
    killed = lfads("pbt", *args, cwd=cwd, env={**(env or {}), "LFADS_FAULTS": faults})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pbt")
    return client.search_runs([exp.experiment_id], max_results=5000)


def parent_of(uri: str):
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("lfads.kind") == "pbt"]
    return parent


def members_of(uri: str) -> list:
    return [r for r in all_runs(uri) if r.data.tags.get("lfads.kind") == "pbt_member"]


def final_attempts(members: list) -> dict[tuple[int, int], object]:
    final: dict[tuple[int, int], object] = {}
    for r in members:
        key = (int(r.data.tags["lfads.member"]), int(r.data.tags["lfads.generation"]))
        if key not in final or int(r.data.tags["lfads.attempt"]) > int(
            final[key].data.tags["lfads.attempt"]
        ):
            final[key] = r
    return final


def decisions(uri: str, parent_id: str, generation: int, tmp: Path) -> dict:
    path = MlflowClient(uri).download_artifacts(
        parent_id, f"decisions/gen_{generation:03d}.json", str(tmp)
    )
    return json.loads(Path(path).read_text())


def wait_until_no_running(uri: str, timeout: float = 120) -> list:
    """Jobs orphaned by a killed controller finish on their own; wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        running = [r for r in all_runs(uri) if r.info.status == "RUNNING"]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(1)


def assert_parent_outputs(uri: str) -> None:
    """The parent ends with the best member's posterior metrics and outputs, and the report."""
    parent = parent_of(uri)
    client = MlflowClient(uri)
    assert "posterior/valid_rate_r2" in parent.data.metrics
    report = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert report == {"fitness_per_generation.png", "hyperparameter_evolution.png", "summary.csv"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "outputs")] == [
        "outputs/lfads_output_tiny.h5"
    ]


def assert_complete_population(uri: str, population: int, generations: int, tmp: Path) -> None:
    """Every member has one usable final run per generation; lineage follows the decisions."""
    parent = parent_of(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["lfads.state"] == "finished"
    final = final_attempts(members_of(uri))
    assert sorted(final) == [(m, g) for m in range(population) for g in range(generations)]
    for run in final.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["lfads.state"] in ("finished", "exploited")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for g in range(generations - 1):
        dec = decisions(uri, parent.info.run_id, g, tmp)
        assert len(dec["replacements"]) == population // 2
        losers = {rep["loser"] for rep in dec["replacements"]}
        for m in range(population):
            nxt = final[(m, g + 1)]
            plan = dec["next"][str(m)]
            assert nxt.data.tags["lfads.copied_from"] == plan["copied_from"]
            hparams = json.loads(nxt.data.tags["lfads.hparams"])
            assert hparams == pytest.approx(plan["hparams"])
            assert float(nxt.data.params["train.lr"]) == pytest.approx(hparams["train.lr"])
            state = final[(m, g)].data.tags["lfads.state"]
            assert state == ("exploited" if m in losers else "finished")
        for rep in dec["replacements"]:
            assert rep["winner_fitness"] <= rep["loser_fitness"]
            assert final[(rep["winner"], g)].info.run_id == rep["winner_run"]


def test_pbt_runs_to_the_end_with_mlflow_layout(tmp_path, data_dir):
    root, uri = project(tmp_path, data_dir, pbt_config())
    proc = lfads(
        "pbt", "--launcher", "local", "pbt.yaml", cwd=root, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_complete_population(uri, 4, 3, tmp_path)
    parent = parent_of(uri)
    client = MlflowClient(uri)
    assert_parent_outputs(uri)
    best = client.get_run(parent.data.tags["lfads.best_run"])
    last_gen = [r for (m, g), r in final_attempts(members_of(uri)).items() if g == 2]
    assert best.data.metrics["pbt/fitness"] == min(r.data.metrics["pbt/fitness"] for r in last_gen)
    status = lfads("pbt", "status", parent.info.run_id, cwd=root, env={"MLFLOW_TRACKING_URI": uri})
    assert status.returncode == 0, status.stderr
    assert "finished" in status.stdout and all(f" {m} " in status.stdout for m in range(4))


def test_failed_members_are_retried_then_replaced(tmp_path, data_dir):
    """crash and NaN recover on retry; a hang is detected by heartbeat; a member whose job exits
    non-zero on every attempt (leaving its run RUNNING) is marked failed and copies a winner."""
    # 60 s: on a loaded 2-core machine a warm worker can take 20 s to import and beat once.
    root, uri = project(tmp_path, data_dir, pbt_config(generations=2, heartbeat_timeout=60.0))
    faults = (
        "member.start[member=0,generation=0,attempt=0]=crash;"
        "member.start[member=1,generation=0,attempt=0|1]=exit;"
        "member.fitness[member=2,generation=0,attempt=0]=nan;"
        "member.start[member=3,generation=0,attempt=0]=hang"
    )
    env = {"MLFLOW_TRACKING_URI": uri, "LFADS_FAULTS": faults}
    proc = lfads("pbt", "--launcher", "local", "pbt.yaml", cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = members_of(uri)
    gen0 = {}
    for r in runs:
        if r.data.tags["lfads.generation"] == "0":
            gen0.setdefault(int(r.data.tags["lfads.member"]), {})[
                int(r.data.tags["lfads.attempt"])
            ] = r
    for member in (0, 2, 3):
        assert (
            gen0[member][0].info.status == "FAILED"
            and gen0[member][0].data.tags["lfads.state"] == "failed"
        )
        assert gen0[member][1].info.status == "FINISHED"
    assert "injected crash" in gen0[0][0].data.tags["lfads.error"]
    assert "NaN" in gen0[2][0].data.tags["lfads.error"]
    assert "heartbeat" in gen0[3][0].data.tags["lfads.error"]
    assert [gen0[1][a].info.status for a in (0, 1)] == ["FAILED", "FAILED"]
    assert "without closing its run" in gen0[1][1].data.tags["lfads.error"]
    dec = decisions(uri, parent_of(uri).info.run_id, 0, tmp_path)
    (rep,) = [r for r in dec["replacements"] if r["loser"] == 1]
    assert rep["loser_fitness"] is None and rep["winner"] != 1
    assert all(r["winner"] != 1 for r in dec["replacements"])
    assert wait_until_no_running(uri, timeout=5) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at", ["after_submit:0", "after_decisions:0", "mid_creation:1", "after_submit:1"]
)
def test_sigkilled_controller_resumes_to_the_same_population(tmp_path, data_dir, kill_at):
    root, uri = project(tmp_path, data_dir, pbt_config(generations=2))
    env = {"MLFLOW_TRACKING_URI": uri}
    pbt_killed_at(kill_at, "--launcher", "local", "pbt.yaml", cwd=root, env=env)
    parent_id = parent_of(uri).info.run_id
    assert parent_of(uri).info.status == "RUNNING"
    resumed = lfads("pbt", "--resume", parent_id, cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert wait_until_no_running(uri) == []
    assert_complete_population(uri, 4, 2, tmp_path)
    # Nothing ran twice: one attempt per member and generation (no faults were injected), so a
    # job running when the controller died was adopted, not submitted again.
    attempts = {}
    for r in members_of(uri):
        key = (r.data.tags["lfads.member"], r.data.tags["lfads.generation"])
        attempts[key] = attempts.get(key, 0) + 1
    assert set(attempts.values()) == {1}


@pytest.mark.slow
def test_rerunning_the_same_command_resumes(tmp_path, data_dir):
    root, uri = project(tmp_path, data_dir, pbt_config(generations=2))
    env = {"MLFLOW_TRACKING_URI": uri}
    pbt_killed_at("after_decisions:0", "--launcher", "local", "pbt.yaml", cwd=root, env=env)
    again = lfads("pbt", "--launcher", "local", "pbt.yaml", cwd=root, env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming unfinished PBT run" in again.stderr
    assert len([r for r in all_runs(uri) if r.data.tags.get("lfads.kind") == "pbt"]) == 1
    assert_complete_population(uri, 4, 2, tmp_path)


def test_random_search_uses_the_same_layout_and_budget(tmp_path, data_dir):
    root, uri = project(tmp_path, data_dir, pbt_config(generations=2))
    proc = lfads(
        "search",
        "--sampler",
        "random",
        "--trials",
        "3",
        "pbt.yaml",
        cwd=root,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    parent = parent_of_kind(uri, "search")
    assert parent.info.status == "FINISHED" and parent.data.tags["lfads.search"] == "random"
    trials = members_of(uri)
    assert sorted(int(r.data.tags["lfads.member"]) for r in trials) == [0, 1, 2]
    for r in trials:
        assert (
            r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        )
        # PBT's whole budget per trial: burn_in 1 + 2 generations x 1 epoch.
        assert r.data.tags["lfads.target_epoch"] == "3" and r.data.params["train.max_epochs"] == "3"
    assert len({r.data.tags["lfads.hparams"] for r in trials}) == 3  # sampled, not copied
    assert "posterior/valid_rate_r2" in parent.data.metrics


def parent_of_kind(uri: str, kind: str):
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("lfads.kind") == kind]
    return parent
