"""The SLURM job's USR2 hook (WorkerJob.checkpoint) against a real training process.

No SLURM here: the child process installs the hook on USR2 itself, as submitit does, and the
test sends the signals. The signal interrupts the main thread anywhere, including halfway through
an sqlite write of MLflow or Lightning's own checkpoint save; the hook must neither fail there
nor corrupt what the main thread was doing (a CI run once failed on "database is locked").
"""

from __future__ import annotations

import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lfads_lightning.runs import tracking

from .helpers import member_run_config, member_tags

CHILD = """
import pickle, signal, sys
from launchers.slurm import WorkerJob

run_id, uri, spill, out, exit_on_signal = sys.argv[1:6]
job = WorkerJob(run_id, uri, spill)
busy = []

def on_usr2(signum, frame):
    if busy:  # submitit handles one USR2; later ones here only stress the hook
        return
    busy.append(1)
    try:
        delayed = job.checkpoint()
        if delayed.function.interrupted is not None:  # None: training had not begun or ended
            with open(out, "wb") as f:
                pickle.dump(delayed, f)
        if exit_on_signal == "1":
            sys.exit(-1)  # what submitit does once it has requeued the job
    finally:
        busy.clear()

signal.signal(signal.SIGUSR2, on_usr2)
code = job()
signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # the parent may still be signalling
sys.exit(code)
"""


def start_member(tmp_path: Path, data_dir: Path, target_epoch: int, exit_on_signal: bool):
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=target_epoch))
    out = tmp_path / "delayed.pkl"
    args = [run_id, uri, str(tmp_path / "spill"), str(out), "1" if exit_on_signal else "0"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return uri, run_id, out, child


def wait_for_epochs(client: MlflowClient, run_id: str, n: int, child) -> None:
    deadline = time.monotonic() + 240
    while len(client.get_metric_history(run_id, "epoch_seconds")) < n:
        assert child.poll() is None, child.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def test_the_hook_survives_signals_at_any_moment_of_training(tmp_path, data_dir):
    """Dozens of USR2 at random moments: every one saves a loadable checkpoint, none breaks
    the training or its MLflow writes, and the run finishes normally."""
    uri, run_id, out, child = start_member(tmp_path, data_dir, 100, exit_on_signal=False)
    client = MlflowClient(uri)
    wait_for_epochs(client, run_id, 1, child)
    rng, sent, deadline = random.Random(0), 0, time.monotonic() + 240
    while child.poll() is None:
        if time.monotonic() > deadline:  # a hook waiting on a lock the main thread holds
            child.kill()
            pytest.fail(f"training hung after {sent} signals: {child.stdout.read()[-3000:]}")
        child.send_signal(signal.SIGUSR2)
        sent += 1
        time.sleep(rng.uniform(0.01, 0.1))
    log = child.stdout.read()
    assert child.returncode == 0, log[-3000:]
    assert sent >= 20, f"only {sent} signals reached the training"
    assert "could not save" not in log, log[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "lfads.error" not in run.data.tags
    delayed = pickle.loads(out.read_bytes())
    ckpt_path, epoch = delayed.function.interrupted
    import torch

    state = torch.load(ckpt_path, weights_only=False)
    assert state["epoch"] == epoch and 1 <= epoch <= 100 and "state_dict" in state


def test_the_requeued_job_resumes_from_what_the_hook_saved(tmp_path, data_dir):
    """One USR2 then exit (as submitit after `scontrol requeue`); running the pickled
    DelayedSubmission (what the requeued job does) uploads the checkpoint and resumes there."""
    uri, run_id, out, child = start_member(tmp_path, data_dir, 40, exit_on_signal=True)
    client = MlflowClient(uri)
    wait_for_epochs(client, run_id, 4, child)
    child.send_signal(signal.SIGUSR2)
    log = child.communicate(timeout=120)[0]
    assert child.returncode == 255, log[-3000:]
    assert client.get_run(run_id).info.status == "RUNNING"  # requeued, not failed
    delayed = pickle.loads(out.read_bytes())
    ckpt_path, epoch = delayed.function.interrupted
    assert epoch >= 3 and Path(ckpt_path).is_file()

    second = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; sys.exit(pickle.load(open(sys.argv[1], 'rb')).result())",
            str(out),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lfads.resumed_from"] == "own checkpoint (requeued job)"
    assert run.data.tags["lfads.interrupted_at_epoch"] == str(epoch)
    assert not Path(ckpt_path).exists()  # uploaded, then removed from the spill folder
    # The resumed execution went on from there: the epochs before it were trained only once.
    epochs = [m.step for m in client.get_metric_history(run_id, "epoch_seconds")]
    assert max(epochs) == 39 and all(epochs.count(e) == 1 for e in range(epoch - 1)), epochs
