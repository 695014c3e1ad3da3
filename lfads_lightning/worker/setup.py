"""What every worker job needs before it trains: the run's config, thread count, DataModule,
LightningModule and Trainer, built the same way for a fit, a PBT member and final sampling."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lfads_lightning.config import LfadsConfig, config_from_dict
from lfads_lightning.runs.tracking import CONFIG_ARTIFACT


def load_run_config(client: Any, run_id: str) -> LfadsConfig:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        raw = yaml.safe_load(Path(path).read_text())
    return config_from_dict(raw)


# Torch threads of a job when neither train.threads nor $LFADS_THREADS says: at the demo's and
# NLB's model sizes a second thread gains little (<= 5%), and threads that compete for cores
# with other jobs collapse throughput 10-30x (benchmarks/bench_threads.py, docs/usage.md).
DEFAULT_THREADS = 1


def set_threads(threads: int) -> int:
    """`threads`, else $LFADS_THREADS, else DEFAULT_THREADS (never "every core").

    Also quiets Lightning's start-up chatter (accelerator lines, tips) in worker logs."""
    import logging
    import warnings

    import torch

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    n = threads or int(os.environ.get("LFADS_THREADS", "0")) or DEFAULT_THREADS
    torch.set_num_threads(n)
    return n


def datamodule_for(cfg: LfadsConfig) -> Any:
    """The DataModule a config describes (loads and validates every file now)."""
    from lfads_lightning.data.datamodule import LfadsDataModule

    d = cfg.data
    return LfadsDataModule(
        d.paths, d.batch_size, cfg.model.recon, d.sv_rate, d.sv_seed, cfg.train.seed
    )


def build_module(cfg: LfadsConfig, dm: Any) -> Any:
    import torch

    from lfads_lightning.model.module import LfadsModule

    module = LfadsModule(
        model=dataclasses.asdict(cfg.model),
        loss=dataclasses.asdict(cfg.loss),
        train=dataclasses.asdict(cfg.train),
        encod_dims=dm.encod_dims,
        recon_dims=dm.recon_dims,
        encod_seq_len=dm.encod_seq_len,
        recon_seq_len=dm.recon_seq_len,
        ext_input_dim=dm.ext_input_dim,
        sv_rate=cfg.data.sv_rate,
    )
    for s, session in enumerate(dm.sessions):
        train = session.splits["train"]
        mean = torch.from_numpy(np.nanmean(train.recon_data, axis=(0, 1)))
        module.lfads.init_readout_bias(s, mean)
        if cfg.model.readin_pca_init and cfg.model.readin_dim > 0:
            module.lfads.init_readin_pca(
                s, torch.from_numpy(train.encod_data), cfg.model.readin_freeze
            )
    return module


def burn_in_epochs(cfg: LfadsConfig) -> int:
    if cfg.train.burn_in is not None:
        return cfg.train.burn_in
    lc = cfg.loss
    return max(lc.kl_start_epoch + lc.kl_increase_epoch, lc.l2_start_epoch + lc.l2_increase_epoch)


def make_trainer(
    cfg: LfadsConfig,
    run_dir: Path,
    callbacks: list[Any],
    max_epochs: int | None = None,
    resuming: bool = False,
) -> Any:
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lfads_lightning.worker.checkpoint import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]  # atomic saves, weights_only loads
    if "SLURM_JOB_ID" in os.environ:
        # submitit owns requeueing; Lightning's own SLURM signal handlers would fight it.
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    if cfg.train.progress_bar:
        callbacks = [*callbacks, TQDMProgressBar()]
    from lightning.pytorch.callbacks import ModelCheckpoint

    return L.Trainer(
        max_epochs=max_epochs or cfg.train.max_epochs,
        # Only when asked for: PBT members save one checkpoint at the end of their generation.
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        accelerator=cfg.train.accelerator,
        devices=1,
        logger=False,
        callbacks=callbacks,
        gradient_clip_val=cfg.train.grad_clip,
        enable_progress_bar=cfg.train.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        # A member resumes a checkpoint that already ran validation: no sanity pass needed.
        num_sanity_val_steps=0 if resuming else 1,
        log_every_n_steps=1,
        plugins=plugins,
    )
