"""What a worker does for one MLflow run: train, posterior-sample, evaluate, log.

A worker is given only a run id and a tracking URI; the resolved config is the run's
`config.yaml` artifact. So the same worker runs under every launcher.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from . import tracking
from .config import LfadsConfig, config_from_dict
from .errors import LfadsError
from .tracking import CONFIG_ARTIFACT


def load_run_config(client: Any, run_id: str) -> LfadsConfig:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        raw = yaml.safe_load(Path(path).read_text())
    return config_from_dict(raw)


def set_threads(threads: int) -> int:
    """Also quiets Lightning's start-up chatter (accelerator lines, tips) in worker logs."""
    import logging
    import warnings

    import torch

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    n = threads or int(os.environ.get("LFADS_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def datamodule_for(cfg: LfadsConfig) -> Any:
    """The DataModule a config describes (loads and validates every file now)."""
    from .datamodule import LfadsDataModule

    d = cfg.data
    return LfadsDataModule(
        d.paths, d.batch_size, cfg.model.recon, d.sv_rate, d.sv_seed, cfg.train.seed
    )


def build_module(cfg: LfadsConfig, dm: Any) -> Any:
    import torch

    from .module import LfadsModule

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

    plugins = []
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
        plugins=plugins or None,
    )


def fit_run(cfg: LfadsConfig, run_id: str, uri: str) -> dict[str, float]:
    """Train, sample the best checkpoint, evaluate, and log everything to run `run_id`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .callbacks import BurnInEarlyStopping, MlflowEpochLogger
    from .module import LfadsModule

    client = tracking.client(uri)
    threads = set_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, verbose=False)
    dm = datamodule_for(cfg)
    module = build_module(cfg, dm)
    run_dir = Path(cfg.output.dir) / run_id
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="valid/recon_smth",
        mode="min",
        save_last=True,
        save_top_k=1,
    )
    callbacks: list[Any] = [ckpt, MlflowEpochLogger(uri, run_id)]
    if cfg.train.early_stopping:
        callbacks.append(
            BurnInEarlyStopping("valid/recon_smth", cfg.train.patience, burn_in_epochs(cfg))
        )
    trainer = make_trainer(cfg, run_dir, callbacks)
    client.set_tag(run_id, "lfads.threads", str(threads))
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_seconds = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt
    if ckpt.best_model_path:
        module = LfadsModule.load_from_checkpoint(ckpt.best_model_path, map_location=module.device)
    summary = {"train_seconds": train_seconds, "epochs": float(trainer.current_epoch)}
    summary.update(sample_and_log(cfg, module, dm, client, run_id, run_dir))
    tracking.log_metrics(client, run_id, summary)
    for path in (ckpt.best_model_path, ckpt.last_model_path):
        if path:
            client.log_artifact(run_id, path, "checkpoints")
    return summary


def sample_and_log(
    cfg: LfadsConfig, module: Any, dm: Any, client: Any, run_id: str, run_dir: Path
) -> dict[str, float]:
    """Posterior-sample every split, write the outputs, log metrics and figures to the run."""
    from .evaluation import posterior_metrics
    from .sampling import sample_all, write_output

    start = time.perf_counter()
    outputs = sample_all(module, dm, cfg.output.n_samples)
    logged: dict[str, float] = {"sampling_seconds": time.perf_counter() - start}
    for s, (session, per_split) in enumerate(zip(dm.sessions, outputs, strict=True)):
        prefix = "posterior/" if len(dm.sessions) == 1 else f"posterior/s{s}_"
        for key, value in posterior_metrics(session, per_split, cfg.model.recon).items():
            logged[prefix + key] = value
        out_path = write_output(
            run_dir / f"lfads_output_{Path(session.path).stem}.h5",
            session.path,
            per_split,
            {"mlflow_run_id": run_id, "n_samples": cfg.output.n_samples},
        )
        client.log_artifact(run_id, str(out_path), "outputs")
        if cfg.output.figures:
            log_figures(
                client, run_id, session, per_split, run_dir / "figures", tag=Path(session.path).stem
            )
    return logged


def log_figures(
    client: Any,
    run_id: str,
    session: Any,
    outputs: dict[str, dict[str, np.ndarray]],
    fig_dir: Path,
    tag: str,
) -> None:
    from . import figures

    split = "valid" if "valid" in outputs else next(iter(outputs))
    data, out = session.splits[split], outputs[split]
    bin_ms = session.bin_size_ms
    n = min(3, data.n_trials)
    made = {
        "raster_vs_rates": figures.raster_vs_rates(
            data.recon_data if data.recon_data is not None else data.encod_data,
            out["rates"],
            data.truth,
            trial_ids=tuple(range(n)),
            bin_size_ms=bin_ms,
        ),
        "factors_pca": figures.factor_trajectories(out["factors"], data.cond_idx),
        "inferred_inputs": figures.inferred_inputs(
            out["co_means"], trial_ids=tuple(range(n)), bin_size_ms=bin_ms
        ),
    }
    if data.truth is not None:
        made["rates_vs_truth"] = figures.rates_vs_truth(
            out["rates"], data.truth, trial_ids=tuple(range(n)), bin_size_ms=bin_ms
        )
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in made.items():
        path = figures.save_figure(fig, fig_dir / f"{tag}_{split}_{name}.png")
        client.log_artifact(run_id, str(path), "figures")


def run_worker(run_id: str, uri: str) -> int:
    """Entry point of `lfads worker`: never leaves the run RUNNING, whatever happens."""
    try:
        client = tracking.client(uri)
        run = client.get_run(run_id)
        cfg = load_run_config(client, run_id)
        if run.data.tags.get(tracking.TAG_PREFIX + "kind") == "pbt_member":
            from .pbt.member import train_member

            fitness = train_member(cfg, run, uri)
            client.set_terminated(run_id, status="FINISHED")
            print(f"lfads: member run {run_id} finished: fitness {fitness:.6g}", file=sys.stderr)
            return 0
        summary = fit_run(cfg, run_id, uri)
        client.set_terminated(run_id, status="FINISHED")
        shown = {k: round(v, 4) for k, v in summary.items() if k.startswith("posterior/")}
        print(f"lfads: run {run_id} finished: {shown}", file=sys.stderr)
        return 0
    except LfadsError as err:
        print(f"error: {err}", file=sys.stderr)
        tracking.mark_failed(uri, run_id, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        tracking.mark_failed(uri, run_id, "interrupted", status="KILLED")
        print("lfads: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - report any crash on the run, then exit non-zero
        traceback.print_exc()
        tracking.mark_failed(uri, run_id, f"{type(err).__name__}: {err}")
        return 1
