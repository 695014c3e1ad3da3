"""Lightning callbacks: early stopping that waits for the ramps, and per-epoch MLflow logging."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lfads_lightning.runs import tracking


class BurnInEarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs, but never before `burn_in`.

    During the KL/L2 ramps the objective itself changes every epoch, so an early plateau means
    nothing; Lightning's EarlyStopping has no notion of that.
    """

    def __init__(
        self,
        monitor: str = "valid/recon_smth",
        patience: int = 25,
        burn_in: int = 0,
        min_delta: float = 0.0,
    ) -> None:
        self.monitor = monitor
        self.patience = patience
        self.burn_in = burn_in
        self.min_delta = min_delta
        self.best = math.inf
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if value < self.best - self.min_delta:
            self.best = value
            self.wait = 0
        elif trainer.current_epoch >= self.burn_in:
            self.wait += 1
        if trainer.current_epoch >= self.burn_in and self.wait >= self.patience:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.wait = state_dict["wait"]


class MlflowEpochLogger(Callback):
    """Log every scalar in trainer.callback_metrics to an existing MLflow run once per epoch.

    One batched request per epoch keeps tracking cheap, even against a remote server.
    """

    def __init__(self, tracking_uri: str, run_id: str, epoch_offset: int = 0) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.epoch_offset = epoch_offset
        self._client = None
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        values = {}
        for key, value in trainer.callback_metrics.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        if trainer.optimizers:
            values["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        values["epoch_seconds"] = time.perf_counter() - self._epoch_start
        tracking.log_metrics(
            self._client, self.run_id, values, step=trainer.current_epoch + self.epoch_offset
        )
