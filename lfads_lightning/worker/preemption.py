"""Preemption: keep a worker's progress across a SLURM requeue.

On USR2 (SLURM's warning before preemption or the time limit) the signal handler only sets a
flag: the interrupted main thread may be halfway through an MLflow (sqlite) write or a
checkpoint save, and neither may be re-entered. At the next batch boundary the training loop
saves its state to the spill folder the launcher named (LFADS_SPILL_DIR) and raises Preempted;
the worker then exits with REQUEUE_EXIT and leaves its run open. The requeued execution of the
same command uploads that state as the run's own checkpoint and resumes from it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from launchers.spec import REQUEUE_EXIT, SPILL_DIR_ENV

__all__ = ["REQUEUE_EXIT", "Preempted", "SaveOnPreemption", "install", "spilled_checkpoint"]

_requested: list[int] = []


class Preempted(Exception):  # noqa: N818 - an event, not an error
    """Training stopped on USR2; the state is saved (or there was none yet)."""


def install() -> bool:
    """Register the USR2 flag where the launcher can requeue this job (it set a spill folder)."""
    if not os.environ.get(SPILL_DIR_ENV):
        return False
    signal.signal(signal.SIGUSR2, lambda signum, frame: _requested.append(signum))
    return True


def requested() -> bool:
    return bool(_requested)


def ignore_further() -> None:
    """Once the state is saved, later USR2s (SLURM's and the job's own) change nothing; and at
    interpreter exit Python resets Python-level handlers to the default, which would kill us."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def spill_path(run_id: str) -> Path | None:
    root = os.environ.get(SPILL_DIR_ENV)
    return Path(root) / run_id / "last.ckpt" if root else None


def spilled_checkpoint(run_id: str) -> tuple[Path, int] | None:
    """(checkpoint, epoch) that an earlier, preempted execution of this run saved, if any."""
    path = spill_path(run_id)
    if path is None or not path.is_file():
        return None
    epoch_file = path.with_name("epoch")
    epoch = int(epoch_file.read_text()) if epoch_file.is_file() else -1
    return path, epoch


class SaveOnPreemption(Callback):
    """At the first batch boundary after USR2: save the trainer's state, stop with Preempted."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def _maybe_stop(self, trainer: Any) -> None:
        if not _requested:
            return
        dest = spill_path(self.run_id)
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            trainer.save_checkpoint(partial)
            os.replace(partial, dest)
            dest.with_name("epoch").write_text(str(int(trainer.current_epoch)))
        raise Preempted(f"preempted at epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._maybe_stop(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._maybe_stop(trainer)
