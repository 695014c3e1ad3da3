"""`lfads pbt stop`, and Ctrl-C/SIGTERM of the controller, with real processes end to end.

The controller runs as a real `lfads pbt --launcher local` process with warm `lfads serve`
workers. Generation 1's members hang (the `member.start` fault point, lfads_lightning/faults.py),
so they are reliably running when the test stops or interrupts the run. Every process the run
starts inherits a marker environment variable, so the tests can check that none is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml
from mlflow import MlflowClient

from lfads_lightning.cli import main

from .helpers import lfads
from .test_pbt_e2e import all_runs, assert_parent_outputs, members_of, parent_of, pbt_config

HANG_GEN1 = "member.start[generation=1]=hang"


def setup(tmp_path: Path, data_dir: Path, generations: int = 3) -> tuple[Path, dict]:
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    config = pbt_config(population=2, generations=generations, heartbeat_timeout=600.0)
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return tmp_path, {"MLFLOW_TRACKING_URI": uri, "LFADS_TEST_MARK": str(tmp_path)}


def start_controller(root: Path, env: dict, faults: str = HANG_GEN1) -> subprocess.Popen:
    """The controller process, once it has made the store and the parent run (the test reads
    the store only then: two processes creating one sqlite store at once collide)."""
    log = open(root / "controller.log", "w")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfads_lightning", "pbt", "--launcher", "local", "pbt.yaml"],
        cwd=root,
        env={**os.environ, **env, "LFADS_FAULTS": faults},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    made = lambda: "new PBT run" in (root / "controller.log").read_text()  # noqa: E731
    wait_for("the parent run", made, proc)
    return proc


def wait_for(what: str, condition, proc: subprocess.Popen | None = None, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"controller exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.5)
    return value


def generation_running(uri: str, generation: int, population: int = 2) -> bool:
    """Every member of `generation` is running and its worker has started (it beat once)."""
    gen = [r for r in members_of(uri) if r.data.tags["lfads.generation"] == str(generation)]
    started = [r for r in gen if r.data.tags.get("lfads.state") == "running"]
    return len(started) == population and all("lfads.heartbeat" in r.data.tags for r in gen)


def processes_of(root: Path) -> list[str]:
    """Command lines of live processes started for this test's run (the marker variable)."""
    marker = f"LFADS_TEST_MARK={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def assert_nothing_running(uri: str, root: Path) -> None:
    assert [r.info.run_id for r in all_runs(uri) if r.info.status == "RUNNING"] == []
    # Killed processes disappear a moment after their signal; none may stay.
    wait_for("the run's processes to end", lambda: not processes_of(root), timeout=30)


def gen1_members(uri: str) -> list:
    return [r for r in members_of(uri) if r.data.tags["lfads.generation"] == "1"]


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def test_stop_with_a_live_controller_finishes_with_the_best_member_so_far(
    tmp_path, data_dir, capsys, monkeypatch
):
    root, env = setup(tmp_path, data_dir)
    uri = env["MLFLOW_TRACKING_URI"]
    controller = start_controller(root, env)
    wait_for("generation 1 to run", lambda: generation_running(uri, 1), controller)
    parent = parent_of(uri).info.run_id
    # While it runs, the parent is a valid input to `lfads sample` (its best member so far);
    # `lfads evaluate PARENT` says what to run instead of asking whether it finished.
    monkeypatch.chdir(root)
    with h5py.File(root / "tiny.h5", "r") as src, h5py.File(root / "new.h5", "w") as f:
        f["encod_data"] = src["valid_encod_data"][()]
    code, err = cli(capsys, "sample", parent, "--data", "new.h5", "--out", "new_out.h5",
                    "--tracking-uri", uri)  # fmt: skip
    assert code == 0, err
    gen0 = [r for r in members_of(uri) if r.data.tags["lfads.generation"] == "0"]
    with h5py.File(root / "new_out.h5", "r") as f:
        best0 = min(gen0, key=lambda r: r.data.metrics["pbt/fitness"])
        assert f.attrs["lfads_model_run"] == best0.info.run_id
    code, err = cli(capsys, "evaluate", parent, "--no-figures", "--tracking-uri", uri)
    assert code != 0 and len(err.splitlines()) == 1
    assert f"lfads pbt stop {parent}" in err and f"lfads sample {parent}" in err

    stop = lfads("pbt", "stop", parent, cwd=root, env=env)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert "asked the controller" in stop.stderr and "is stopped" in stop.stdout
    assert controller.wait(timeout=120) == 0, (root / "controller.log").read_text()[-3000:]
    assert_nothing_running(uri, root)
    run = parent_of(uri)
    assert (run.data.tags["lfads.state"], run.info.status) == ("stopped", "KILLED")
    assert run.data.tags["lfads.best_run"] == best0.info.run_id
    for member in gen1_members(uri):
        assert (member.data.tags["lfads.state"], member.info.status) == ("stopped", "KILLED")
    assert_parent_outputs(uri)
    status = lfads("pbt", "status", parent, cwd=root, env=env)
    assert "state stopped (KILLED)" in status.stdout and "stopped" in status.stdout.splitlines()[-1]
    # Stopped is final: --resume and a second stop are one-line errors.
    for args in (["pbt", "--resume", parent], ["pbt", "stop", parent]):
        code, err = cli(capsys, *args, "--tracking-uri", uri)
        assert code != 0 and len(err.splitlines()) == 1, err
        assert ("cannot be resumed" if args[1] == "--resume" else "already stopped") in err


@pytest.mark.slow
def test_stop_without_a_controller_stops_the_orphaned_jobs_itself(tmp_path, data_dir):
    root, env = setup(tmp_path, data_dir)
    uri = env["MLFLOW_TRACKING_URI"]
    controller = start_controller(root, env)
    wait_for("generation 1 to run", lambda: generation_running(uri, 1), controller)
    controller.kill()  # SIGKILL: nothing of the controller runs; its hung member jobs go on
    controller.wait()
    parent = parent_of(uri).info.run_id
    status = lfads("pbt", "status", parent, cwd=root, env=env)
    assert "no controller is running" in status.stdout, status.stdout
    assert any("serve" in cmd for cmd in processes_of(root))  # the orphaned warm workers
    stop = lfads("pbt", "stop", parent, cwd=root, env=env)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert "asked the controller" not in stop.stderr
    assert "stopped 2 member run(s) (2 job(s) cancelled)" in stop.stderr
    assert_nothing_running(uri, root)
    run = parent_of(uri)
    assert (run.data.tags["lfads.state"], run.info.status) == ("stopped", "KILLED")
    assert [m.data.tags["lfads.state"] for m in gen1_members(uri)] == ["stopped", "stopped"]
    assert_parent_outputs(uri)


def interrupt(tmp_path: Path, data_dir: Path, generations: int = 3) -> tuple[Path, dict, str]:
    """Start the run, SIGINT (Ctrl-C) the controller while generation 1 runs."""
    root, env = setup(tmp_path, data_dir, generations)
    uri = env["MLFLOW_TRACKING_URI"]
    controller = start_controller(root, env)
    wait_for("generation 1 to run", lambda: generation_running(uri, 1), controller)
    controller.send_signal(signal.SIGINT)
    assert controller.wait(timeout=120) == 130, (root / "controller.log").read_text()[-3000:]
    return root, env, parent_of(uri).info.run_id


def test_ctrl_c_stops_the_members_and_leaves_a_truthful_status(tmp_path, data_dir):
    root, env, parent = interrupt(tmp_path, data_dir)
    uri = env["MLFLOW_TRACKING_URI"]
    assert_nothing_running(uri, root)
    run = parent_of(uri)
    assert (run.data.tags["lfads.state"], run.info.status) == ("interrupted", "KILLED")
    assert [m.data.tags["lfads.state"] for m in gen1_members(uri)] == ["stopped", "stopped"]
    assert "--resume" in (root / "controller.log").read_text()
    status = lfads("pbt", "status", parent, cwd=root, env=env)
    rows = status.stdout.splitlines()[-2:]
    assert "state interrupted (KILLED)" in status.stdout and f"--resume {parent}" in status.stdout
    assert [row.split()[:3] for row in rows] == [["0", "1", "stopped"], ["1", "1", "stopped"]]


@pytest.mark.slow
def test_resume_after_ctrl_c_reruns_the_stopped_attempts_to_the_end(tmp_path, data_dir):
    root, env, parent = interrupt(tmp_path, data_dir, generations=2)
    uri = env["MLFLOW_TRACKING_URI"]
    resumed = lfads("pbt", "--resume", parent, cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_nothing_running(uri, root)
    run = parent_of(uri)
    assert (run.data.tags["lfads.state"], run.info.status) == ("finished", "FINISHED")
    attempts = {(int(r.data.tags["lfads.member"]), int(r.data.tags["lfads.attempt"])):
                r.data.tags["lfads.state"] for r in gen1_members(uri)}  # fmt: skip
    assert attempts[(0, 0)] == attempts[(1, 0)] == "stopped"
    assert {attempts[(0, 1)], attempts[(1, 1)]} <= {"finished", "exploited"}
    assert_parent_outputs(uri)


def test_stop_of_an_unknown_or_finished_run_is_a_one_line_error(tmp_path, capsys):
    from lfads_lightning.runs import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("pbt", artifact_location=str(tmp_path / "art"))
    finished = client.create_run(exp, tags={"lfads.kind": "pbt", "lfads.state": "finished"})
    client.set_terminated(finished.info.run_id, "FINISHED")
    fit = client.create_run(exp, tags={"lfads.kind": "fit"})
    cases = {
        "0" * 32: "not found",
        finished.info.run_id: "is already finished (FINISHED); there is nothing to stop",
        fit.info.run_id: "is not a PBT or search parent run",
    }
    capsys.readouterr()  # the store's creation messages
    for run_id, expected in cases.items():
        for kind in ("pbt", "search"):
            code, err = cli(capsys, kind, "stop", run_id, "--tracking-uri", uri)
            assert code != 0 and len(err.splitlines()) == 1 and expected in err, err
    assert client.get_run(finished.info.run_id).data.tags.get("lfads.stop_requested") is None
