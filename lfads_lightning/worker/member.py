"""The job of one PBT member for one generation, run by `lfads worker` like any other run.

Everything comes from the MLflow run: the config (with this member's hyperparameters), the run
whose checkpoint to start from (its own previous generation, or the winner it copies), and the
epoch to train up to. It ends by logging its checkpoint and its fitness.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lfads_lightning.config import LfadsConfig
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import FAILED, FINISHED, FITNESS_METRIC, RUNNING, P, set_state

CHECKPOINT_ARTIFACT = "checkpoints/last.ckpt"

# The member training in this process, for save_interrupted_member (a signal handler).
_ACTIVE: dict[str, Any] = {}


def save_interrupted_member(dest: Path) -> int | None:
    """Write the training member's state to `dest` and return its epoch (None: no member is
    training here). Called from a signal handler (SLURM's USR2 before preemption or the time
    limit), so it only writes a local file: the interrupted main thread may be halfway through
    an MLflow write (an sqlite store is then locked) or through Lightning's own checkpoint save,
    and neither may be re-entered. The requeued job uploads the file (upload_interrupted_member).
    """
    import torch

    trainer = _ACTIVE.get("trainer")
    if trainer is None:
        return None
    # What trainer.save_checkpoint writes, without its fsspec transaction (not re-entrant).
    state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, dest)
    return int(trainer.current_epoch)


def upload_interrupted_member(client: Any, run_id: str, path: Path, epoch: int) -> None:
    """Make a checkpoint saved by save_interrupted_member the run's own checkpoint artifact,
    which train_member resumes from; the local file goes once MLflow has it."""
    if path.name != Path(CHECKPOINT_ARTIFACT).name:
        raise ValueError(f"an interrupted member's checkpoint must be named last.ckpt: {path}")
    client.log_artifact(run_id, str(path), str(Path(CHECKPOINT_ARTIFACT).parent))
    client.set_tag(run_id, P + "interrupted_at_epoch", str(epoch))
    path.unlink()


def _own_checkpoint(client: Any, run_id: str, work: str) -> str | None:
    """The checkpoint an interrupted earlier execution of this same run left, if any."""
    if not any(a.path == CHECKPOINT_ARTIFACT for a in client.list_artifacts(run_id, "checkpoints")):
        return None
    return client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, work)


class ApplyHyperparameters(Callback):
    """Set the member's hyperparameters after Lightning restored the checkpoint.

    Restoring an optimiser's state dict silently brings back the learning rate (and weight
    decay) it was saved with; on_train_start runs after that restore.
    """

    def __init__(self, hparams: dict[str, float]) -> None:
        self.hparams = hparams

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.apply_hyperparameters(self.hparams)


class Heartbeat(Callback):
    """A tag with the wall time, each epoch: the controller's evidence that the job is alive."""

    def __init__(self, client: Any, run_id: str, every_s: float = 5.0) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._last = 0.0

    def beat(self) -> None:
        now = time.time()
        if now - self._last >= self.every_s:
            self.client.set_tag(self.run_id, P + "heartbeat", f"{now:.1f}")
            self._last = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.beat()


def _fault_injection(run: Any) -> None:
    """Test hook (only with LFADS_TEST_FAULTS=1): crash, exit, hang or NaN on a chosen attempt."""
    if os.environ.get("LFADS_TEST_FAULTS") != "1":
        return
    fault = run.data.tags.get(P + "test_fault", "")
    if not fault:
        return
    kind, _, attempts = fault.partition("@")
    attempt = int(run.data.tags.get(P + "attempt", "0"))
    if attempts and str(attempt) not in attempts.split(","):
        return
    if kind == "crash":
        raise RuntimeError("injected crash")
    if kind == "exit":
        os._exit(3)
    if kind == "hang":
        time.sleep(3600)


def _injected_nan(tags: dict[str, str]) -> bool:
    if os.environ.get("LFADS_TEST_FAULTS") != "1" or not tags.get(P + "test_fault", "").startswith(
        "nan"
    ):
        return False
    _, _, attempts = tags[P + "test_fault"].partition("@")
    return not attempts or tags.get(P + "attempt", "0") in attempts.split(",")


def train_member(cfg: LfadsConfig, run: Any, uri: str) -> float:
    """Train from the parent checkpoint up to the target epoch; return the fitness."""
    from lfads_lightning.worker.callbacks import MlflowEpochLogger
    from lfads_lightning.worker.setup import build_module, datamodule_for, make_trainer, set_threads

    client = tracking.client(uri)
    run_id = run.info.run_id
    tags = run.data.tags
    set_state(client, run_id, RUNNING)
    heartbeat = Heartbeat(client, run_id)
    heartbeat.beat()
    _fault_injection(run)
    set_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed + int(tags.get(P + "generation", "0")), verbose=False)
    hparams = json.loads(tags.get(P + "hparams", "{}"))
    target_epoch = int(tags[P + "target_epoch"])
    dm = datamodule_for(cfg)
    module = build_module(cfg, dm)
    callbacks = [ApplyHyperparameters(hparams), MlflowEpochLogger(uri, run_id), heartbeat]
    # Everything a member keeps goes to MLflow; its local files live only as long as the job.
    with tempfile.TemporaryDirectory(prefix="lfads-member-") as work:
        source = tags.get(P + "copied_from")
        ckpt = _own_checkpoint(client, run_id, work)
        if ckpt is not None:
            client.set_tag(run_id, P + "resumed_from", "own checkpoint (requeued job)")
        elif source:
            ckpt = client.download_artifacts(source, CHECKPOINT_ARTIFACT, work)
        trainer = make_trainer(
            cfg, Path(work), callbacks, max_epochs=target_epoch, resuming=ckpt is not None
        )
        _ACTIVE.update(trainer=trainer, client=client, run_id=run_id, work=work)
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        finally:
            _ACTIVE.clear()
        if trainer.interrupted:
            raise KeyboardInterrupt
        path = Path(work) / "last.ckpt"
        trainer.save_checkpoint(path)
        client.log_artifact(run_id, str(path), "checkpoints")
    fitness = module.recon_smth if module.recon_smth is not None else math.nan
    if _injected_nan(tags):
        fitness = math.nan
    tracking.log_metrics(
        client, run_id, {"epochs": float(trainer.current_epoch)}, step=trainer.current_epoch
    )
    if not math.isfinite(fitness):
        client.set_tag(run_id, P + "fitness", "nan")
        client.log_metric(run_id, FITNESS_METRIC, math.nan, step=trainer.current_epoch)
        set_state(client, run_id, FAILED)
        raise FloatingPointError("member fitness is not finite (NaN)")
    client.log_metric(run_id, FITNESS_METRIC, fitness, step=trainer.current_epoch)
    client.set_tag(run_id, P + "fitness", f"{fitness:.6g}")
    set_state(client, run_id, FINISHED)
    return fitness
