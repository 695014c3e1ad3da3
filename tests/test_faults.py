"""Faults: signals, kills, races, full disks and hostile checkpoints lose nothing.

Each case ends with a clear one-line message and a non-zero exit, no run left RUNNING, no
truncated or temporary file left behind.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from lfads_lightning.atomic import DiskFullError
from lfads_lightning.runs import tracking

from .helpers import TINY_DATA, TINY_MODEL, lfads

# Long enough that the worker is still training when the test signals it.
LONG_CONFIG = {
    "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
    "model": TINY_MODEL,
    "train": {"max_epochs": 100000, "progress_bar": False, "threads": 1},
    "output": {"n_samples": 2, "figures": False},
    "tracking": {"experiment": "faults"},
}


@pytest.fixture
def project(tmp_path: Path, data_dir: Path) -> Path:
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(LONG_CONFIG))
    return tmp_path


def _start_fit(project: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfads_lightning", "fit", "long.yaml", *overrides],
        cwd=project,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    return proc, uri


def _only_run(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults")
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def _wait_training(proc: subprocess.Popen, uri: str, min_epochs: int = 1, timeout: float = 300):
    """Wait until the worker logged `min_epochs` epochs (so its handlers and a checkpoint
    exist); returns the run id and the worker's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            # Not before the fit made the store: opening it would race with its creation.
            assert Path(uri[len("sqlite:///") :]).exists()
            tracking.check_store(uri)  # waits for the fit's schema lock
            client, run = _only_run(uri)
            history = client.get_metric_history(run.info.run_id, "valid/recon_smth")
        except Exception:  # noqa: BLE001 - store or run not there yet
            history = []
        if len(history) >= min_epochs:
            return run.info.run_id, _worker_pid(run.info.run_id)
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the worker did not start training in time")


def _worker_pid(run_id: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and run_id.encode() in cmd:
            return int(entry.name)
    raise AssertionError(f"no worker process for run {run_id}")


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/status").read_text()
            if "State:\tZ" in status:
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.2)
    return False


def _lfads_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("lfads:", "error:"))]


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_to_fit_stops_the_worker_and_kills_the_run(project, sig, code):
    proc, uri = _start_fit(project)
    run_id, worker = _wait_training(proc, uri, min_epochs=2)  # epoch 0's checkpoint exists
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    last = _lfads_lines(err)[-1]
    name = signal.Signals(sig).name
    assert f"stopped by {name}; the worker was stopped and run {run_id} is marked KILLED" in last
    assert (
        f"its checkpoints are kept in {project / 'lfads_output' / run_id / 'checkpoints'}" in last
    )
    assert "Traceback" not in err
    assert _gone(worker), "the worker was orphaned and keeps training"
    _, run = _only_run(uri)
    assert run.info.status == "KILLED"


def test_sigterm_to_the_worker_closes_its_run_and_the_fit_reports_it(project):
    proc, uri = _start_fit(project)
    run_id, worker = _wait_training(proc, uri)
    os.kill(worker, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "done" not in err
    last = _lfads_lines(err)[-1]
    assert last.startswith(f"lfads: run {run_id} failed: worker stopped by SIGTERM")
    assert "marked KILLED" in last and "Traceback" not in err
    _, run = _only_run(uri)
    assert run.info.status == "KILLED"


def test_kill_9_of_the_worker_is_reported_as_killed_by_signal_9(project):
    proc, uri = _start_fit(project)
    run_id, worker = _wait_training(proc, uri)
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    last = _lfads_lines(err)[-1]
    assert "the worker was killed by signal 9 (SIGKILL; possibly out of memory)" in last
    assert "cancelled" not in last and "marked FAILED" in last
    _, run = _only_run(uri)
    assert run.info.status == "FAILED"
    assert "signal 9" in run.data.tags["lfads.error"]


def test_diverged_training_is_one_line_and_a_failed_run(project):
    proc, uri = _start_fit(project, "train.lr=1e9", "train.max_epochs=2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in err and "rates contain NaN" not in err
    last = _lfads_lines(err)[-1]
    assert "training diverged at epoch 0, step" in last and "train.lr" in last
    _, run = _only_run(uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["lfads.error"].startswith("training diverged at epoch 0, step")


# --------------------------------------------------------------------------- store race


def _first_use(uri: str) -> None:
    tracking.check_store(uri)
    client = tracking.client(uri)
    run = client.create_run(tracking.experiment_id(client, "race"))
    client.set_terminated(run.info.run_id)


def test_concurrent_first_use_of_a_new_sqlite_store(tmp_path):
    """Three processes creating the same new store at once (what two `lfads fit` started
    together do) all succeed; unlocked, MLflow's migrations collide ('duplicate column')."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_first_use, args=(uri,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


# --------------------------------------------------------------------------- disk full


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_save_on_a_full_disk_leaves_no_truncated_file(tmp_path, monkeypatch):
    import torch

    from lfads_lightning.worker.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(1000)}, path)
    before = path.read_bytes()
    real = torch.save

    def half_then_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        _enospc()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(DiskFullError) as info:
        io.save_checkpoint({"w": torch.ones(1000)}, path)
    monkeypatch.setattr(torch, "save", real)
    message = str(info.value)
    assert "\n" not in message and "no space left" in message and str(path) in message
    assert "MB needed" in message
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_trainers_save_checkpoints_atomically():
    from lfads_lightning.config import load_config
    from lfads_lightning.worker.checkpoint import AtomicCheckpointIO
    from lfads_lightning.worker.setup import make_trainer

    trainer = make_trainer(load_config(None, ["train.progress_bar=false"]), Path("/tmp"), [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_output_on_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from lfads_lightning.worker.sampling import write_output

    source = tmp_path / "in.h5"
    with h5py.File(source, "w") as f:
        f["train_encod_data"] = np.zeros((2, 3, 4), np.float32)
    out = tmp_path / "out" / "lfads_output_in.h5"
    real = h5py.Group.create_dataset
    calls = []

    def fill(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            _enospc()
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fill)
    outputs = {"train": {"rates": np.ones((2, 3, 4), np.float32), "factors": np.ones((2, 3, 2))}}
    with pytest.raises(DiskFullError) as info:
        write_output(out, source, outputs)
    message = str(info.value)
    assert "\n" not in message and str(out) in message and "MB needed" in message
    assert list(out.parent.iterdir()) == []


def test_session_write_on_a_full_disk(tmp_path, monkeypatch):
    from lfads_lightning.data.format import write_session

    x = np.ones((3, 4, 2), np.float32)
    splits = {s: {"encod_data": x, "recon_data": x} for s in ("train", "valid")}
    monkeypatch.setattr(h5py.Group, "create_dataset", lambda *a, **k: _enospc())
    with pytest.raises(DiskFullError, match="no space left on the device writing"):
        write_session(tmp_path / "s.h5", splits, {})
    assert list(tmp_path.iterdir()) == []


def test_worker_marks_the_run_failed_with_the_disk_full_reason(tmp_path, monkeypatch, capsys):
    from lfads_lightning.config import load_config
    from lfads_lightning.worker import entry, fit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    cfg = load_config(None, ["data.synth=null", f"data.paths=[{tmp_path / 'x.h5'}]"])
    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.h5"))

    monkeypatch.setattr(fit, "fit_run", full)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    capsys.readouterr()
    assert entry.run_worker(run_id, uri) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on the device writing" in err
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["lfads.error"].startswith("no space left on the device writing")


def test_worker_crash_is_one_line_with_the_traceback_on_the_run(tmp_path, monkeypatch, capsys):
    from lfads_lightning.config import load_config
    from lfads_lightning.worker import entry, fit

    monkeypatch.delenv("LFADS_DEBUG", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    cfg = load_config(None, ["data.synth=null", f"data.paths=[{tmp_path / 'x.h5'}]"])
    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit"})
    monkeypatch.setattr(fit, "fit_run", lambda *a: 1 / 0)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    capsys.readouterr()
    assert entry.run_worker(run_id, uri) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: worker crashed: ZeroDivisionError: division by zero "
        "(traceback in the run's artifact traceback.txt)"
    )
    client = MlflowClient(uri)
    saved = Path(client.download_artifacts(run_id, "traceback.txt", str(tmp_path)))
    assert "Traceback" in saved.read_text() and "ZeroDivisionError" in saved.read_text()
    assert client.get_run(run_id).info.status == "FAILED"


# --------------------------------------------------------------------------- file modes


def test_synth_data_gets_the_umask_mode(tmp_path):
    proc = lfads("data", "synth", "lorenz", "d.h5", *TINY_DATA, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "d.h5").stat().st_mode & 0o777 == 0o666 & ~mask


# --------------------------------------------------------------------------- hostile checkpoints


class _Evil:
    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "PWNED"
    evil = _Evil()
    evil.marker = str(marker)
    _Evil.marker = str(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"x": evil}, "pytorch-lightning_version": "2"}, path
    )
    assert not marker.exists()
    return path, marker


def test_load_module_refuses_a_checkpoint_that_runs_code(tmp_path):
    from lfads_lightning.worker.checkpoint import CheckpointError, load_module

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_module(path)
    assert not marker.exists()
    assert "\n" not in str(info.value) and "refused" in str(info.value)


def test_lightning_resume_refuses_a_checkpoint_that_runs_code(tmp_path):
    """The path of trainer.fit(ckpt_path=...): PBT exploit, SLURM requeue, member resume."""
    from lfads_lightning.worker.checkpoint import AtomicCheckpointIO, CheckpointError

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_cli_sample_refuses_a_checkpoint_that_runs_code(tmp_path, data_dir, monkeypatch, capsys):
    from lfads_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    path, marker = _evil_checkpoint(tmp_path)
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump({"data": {"paths": [str(data_dir / "tiny.h5")], "synth": None}})
    )
    code = main(["sample", "--checkpoint", str(path), "--config", "c.yaml"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "refused" in err
    assert not marker.exists()


def test_real_checkpoints_load_with_weights_only(tmp_path, data_dir):
    """What the project writes loads under weights_only=True (safe globals registered), both
    through load_module and through Lightning's resume."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lfads_lightning.config import load_config
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.setup import build_module, datamodule_for, make_trainer

    cfg = load_config(
        None,
        [f"data.paths=[{data_dir / 'tiny.h5'}]", "data.synth=null", "data.batch_size=8"]
        + [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
        + ["train.progress_bar=false", "train.threads=1", "train.max_epochs=1"],
    )
    L.seed_everything(0, verbose=False)
    dm = datamodule_for(cfg)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="valid/recon_smth")
    trainer = make_trainer(cfg, tmp_path, [ckpt])
    trainer.fit(build_module(cfg, dm), datamodule=dm)
    module = load_module(ckpt.best_model_path)
    assert module.lfads is not None
    again = make_trainer(cfg, tmp_path, [], max_epochs=2, resuming=True)
    again.fit(
        build_module(cfg, dm), datamodule=dm, ckpt_path=ckpt.best_model_path, weights_only=True
    )
    assert again.current_epoch == 2
