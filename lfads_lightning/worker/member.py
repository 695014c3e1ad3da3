"""The job of one PBT member for one generation, run by `lfads worker` like any other run.

Everything comes from the MLflow run: the config (with this member's hyperparameters), the run
whose checkpoint to start from (its own previous generation, or the winner it copies), and the
epoch to train up to. It ends by logging its checkpoint and its fitness.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lfads_lightning import faults
from lfads_lightning.config import LfadsConfig
from lfads_lightning.runs import schema, tracking
from lfads_lightning.runs.schema import FAILED, FINISHED, RUNNING, MemberTags, set_state
from lfads_lightning.worker import preemption

CHECKPOINT_ARTIFACT = "checkpoints/last.ckpt"


def upload_spilled_checkpoint(client: Any, run_id: str) -> None:
    """Make the state a preempted execution of this run saved (worker/preemption) the run's own
    checkpoint artifact, which train_member resumes from; the local file goes once MLflow has
    it. If the upload fails, the member redoes its generation."""
    spilled = preemption.spilled_checkpoint(run_id)
    if spilled is None:
        return
    path, epoch = spilled
    try:
        client.log_artifact(run_id, str(path), str(Path(CHECKPOINT_ARTIFACT).parent))
    except Exception as err:  # noqa: BLE001
        print(
            f"lfads: could not upload the checkpoint saved at preemption ({err}); "
            "the member starts its generation again",
            file=sys.stderr,
        )
        return
    client.set_tag(run_id, schema.INTERRUPTED_AT, str(epoch))
    path.unlink()
    path.with_name("epoch").unlink(missing_ok=True)


def _own_checkpoint(client: Any, run_id: str, work: str) -> str | None:
    """The checkpoint an interrupted earlier execution of this same run left, if any."""
    if not any(a.path == CHECKPOINT_ARTIFACT for a in client.list_artifacts(run_id, "checkpoints")):
        return None
    return client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, work)


class ApplyHyperparameters(Callback):
    """Set the member's hyperparameters (its config's sections) after Lightning restored the
    checkpoint.

    Restoring an optimiser's state dict silently brings back the learning rate (and weight
    decay) it was saved with; on_train_start runs after that restore.
    """

    def __init__(self, cfg: LfadsConfig) -> None:
        self.cfg = cfg

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.apply_hyperparameters(self.cfg.model, self.cfg.loss, self.cfg.train)


class Heartbeat(Callback):
    """A tag with the wall time, each epoch: the controller's evidence that the job is alive."""

    def __init__(self, client: Any, run_id: str, every_s: float = 5.0) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._last = 0.0

    def beat(self) -> None:
        now = time.time()
        if now - self._last >= self.every_s:
            schema.beat(self.client, self.run_id, now)
            self._last = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.beat()


def train_member(cfg: LfadsConfig, run: Any, uri: str) -> float:
    """Train from the parent checkpoint up to the target epoch; return the fitness."""
    client = tracking.client(uri)
    run_id = run.info.run_id
    member = MemberTags.from_run(run)
    where = {"member": member.member, "generation": member.generation, "attempt": member.attempt}
    set_state(client, run_id, RUNNING)
    heartbeat = Heartbeat(client, run_id)
    heartbeat.beat()
    faults.point("member.start", **where)
    module, trainer = _train(cfg, client, uri, run_id, member, heartbeat)
    fitness = module.recon_smth if module.recon_smth is not None else math.nan
    if faults.point("member.fitness", **where) == "nan":
        fitness = math.nan
    tracking.log_metrics(
        client, run_id, {"epochs": float(trainer.current_epoch)}, step=trainer.current_epoch
    )
    if not schema.record_fitness(client, run_id, fitness, step=trainer.current_epoch):
        set_state(client, run_id, FAILED)
        raise FloatingPointError("member fitness is not finite (NaN)")
    set_state(client, run_id, FINISHED)
    return fitness


def _train(
    cfg: LfadsConfig, client: Any, uri: str, run_id: str, member: MemberTags, heartbeat: Heartbeat
) -> tuple[Any, L.Trainer]:
    """Fit from the right checkpoint and log the member's own checkpoint artifact."""
    from lfads_lightning.worker.callbacks import MlflowEpochLogger
    from lfads_lightning.worker.setup import build_module, datamodule_for, make_trainer, set_threads

    set_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed + member.generation, verbose=False)
    dm = datamodule_for(cfg)
    module = build_module(cfg, dm)
    callbacks = [
        ApplyHyperparameters(cfg),
        MlflowEpochLogger(uri, run_id),
        heartbeat,
        preemption.SaveOnPreemption(run_id),
    ]
    upload_spilled_checkpoint(client, run_id)
    # Everything a member keeps goes to MLflow; its local files live only as long as the job.
    with tempfile.TemporaryDirectory(prefix="lfads-member-") as work:
        ckpt = _own_checkpoint(client, run_id, work)
        if ckpt is not None:
            client.set_tag(run_id, schema.RESUMED_FROM, "own checkpoint (requeued job)")
        elif member.copied_from:
            ckpt = client.download_artifacts(member.copied_from, CHECKPOINT_ARTIFACT, work)
        trainer = make_trainer(
            cfg, Path(work), callbacks, max_epochs=member.target_epoch, resuming=ckpt is not None
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
        path = Path(work) / "last.ckpt"
        trainer.save_checkpoint(path)
        client.log_artifact(run_id, str(path), "checkpoints")
        # Its fitness is measured at this last epoch: this is the member's model to sample.
        schema.record_best_checkpoint(client, run_id, CHECKPOINT_ARTIFACT)
    return module, trainer
