"""Preemption without SLURM: the worker's USR2 handling (worker/preemption.py) against a real
training process, and the SLURM job's side of it (launchers.slurm.WorkerCommand).

The signal interrupts the worker's main thread anywhere, including halfway through an sqlite
write of MLflow or Lightning's own checkpoint save; the handler only sets a flag, and the state
is saved at the next batch boundary (a CI run once failed on "database is locked" when the
handler itself wrote). The requeued execution is the same worker command run again.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from launchers.spec import REQUEUE_EXIT, SPILL_DIR_ENV
from lfads_lightning.runs import tracking

from .helpers import member_run_config, member_tags

ROOT = Path(__file__).resolve().parents[1]


def start_worker(uri: str, run_id: str, spill: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lfads_lightning",
            "worker",
            "--run-id",
            run_id,
            "--tracking-uri",
            uri,
        ],
        cwd=ROOT,
        env={**os.environ, SPILL_DIR_ENV: str(spill), "LFADS_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_epochs(client: MlflowClient, run_id: str, n: int, child) -> None:
    deadline = time.monotonic() + 240
    while len(client.get_metric_history(run_id, "epoch_seconds")) < n:
        assert child.poll() is None, child.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def test_signals_at_any_moment_save_the_state_and_leave_the_run_open(tmp_path, data_dir):
    """Dozens of USR2 at random moments: the worker stops at the next batch boundary with a
    loadable checkpoint and REQUEUE_EXIT; its run stays RUNNING (for the requeued job), no
    MLflow write broke, and repeated signals are harmless."""
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=100))
    spill = tmp_path / "spill"
    child = start_worker(uri, run_id, spill)
    client = MlflowClient(uri)
    wait_for_epochs(client, run_id, 1, child)
    rng, sent, deadline = random.Random(0), 0, time.monotonic() + 240
    while child.poll() is None:
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(
                f"the worker did not stop after {sent} signals: {child.stdout.read()[-3000:]}"
            )
        child.send_signal(signal.SIGUSR2)
        sent += 1
        time.sleep(rng.uniform(0.005, 0.05))
    log = child.stdout.read()
    assert child.returncode == REQUEUE_EXIT, log[-3000:]
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "lfads.error" not in run.data.tags
    ckpt = spill / run_id / "last.ckpt"
    epoch = int((spill / run_id / "epoch").read_text())
    import torch

    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == epoch and 0 <= epoch < 100 and "state_dict" in state
    assert not list(spill.rglob("*.partial"))


def test_the_requeued_worker_resumes_from_what_it_saved(tmp_path, data_dir):
    """One USR2 after a few epochs; running the same worker command again (what the requeued
    SLURM job does) uploads the saved state, resumes there and finishes the run."""
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=40))
    spill = tmp_path / "spill"
    child = start_worker(uri, run_id, spill)
    client = MlflowClient(uri)
    wait_for_epochs(client, run_id, 4, child)
    child.send_signal(signal.SIGUSR2)
    log = child.communicate(timeout=120)[0]
    assert child.returncode == REQUEUE_EXIT, log[-3000:]
    epoch = int((spill / run_id / "epoch").read_text())
    assert epoch >= 3

    second = start_worker(uri, run_id, spill)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lfads.resumed_from"] == "own checkpoint (requeued job)"
    assert run.data.tags["lfads.interrupted_at_epoch"] == str(epoch)
    assert not (spill / run_id / "last.ckpt").exists()  # uploaded, then removed
    # The resumed execution went on from there: the epochs before it were trained only once.
    epochs = [m.step for m in client.get_metric_history(run_id, "epoch_seconds")]
    assert max(epochs) == 39 and all(epochs.count(e) == 1 for e in range(epoch - 1)), epochs


HARNESS = """
import pickle, signal, sys
from launchers.slurm import WorkerCommand

command, out = sys.argv[1], sys.argv[2]
job = WorkerCommand([sys.executable, "-c", command], {"MARK": "1"}, grace_s=30)

def on_usr2(signum, frame):  # what submitit's handler does: checkpoint, then requeue and exit
    with open(out, "wb") as f:
        pickle.dump(job.checkpoint(), f)
    sys.exit(-1)

signal.signal(signal.SIGUSR2, on_usr2)
sys.exit(job())
"""

CHILD = """
import os, signal, sys, time
assert os.environ["MARK"] == "1"
got = []
signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
print("ready", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(0.5)  # saving its state
sys.exit(75)
"""


def test_the_slurm_job_passes_usr2_on_and_requeues_the_same_command(tmp_path):
    """submitit calls WorkerCommand.checkpoint on USR2: it passes the signal to the worker,
    waits until the worker has saved and exited, and returns the same command to requeue."""
    out = tmp_path / "delayed.pkl"
    proc = subprocess.Popen(
        [sys.executable, "-c", HARNESS, CHILD, str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGUSR2)
    proc.wait(timeout=60)
    assert proc.returncode == 255
    delayed = pickle.loads(out.read_bytes())
    assert delayed.function.command[-1] == CHILD and delayed.function.env == {"MARK": "1"}
