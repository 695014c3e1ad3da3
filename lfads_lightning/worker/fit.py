"""A fit job: train one model, posterior-sample its best checkpoint, log everything to its run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lfads_lightning.config import LfadsConfig
from lfads_lightning.runs import tracking
from lfads_lightning.worker.setup import (
    build_module,
    burn_in_epochs,
    datamodule_for,
    make_trainer,
    set_threads,
)


def fit_run(cfg: LfadsConfig, run_id: str, uri: str) -> dict[str, float]:
    """Train, sample the best checkpoint, evaluate, and log everything to run `run_id`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lfads_lightning.worker.callbacks import BurnInEarlyStopping, MlflowEpochLogger
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.preemption import SaveOnPreemption

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
    # On USR2 (SLURM) a fit stops at once and is requeued; it then starts over.
    callbacks: list[Any] = [ckpt, MlflowEpochLogger(uri, run_id), SaveOnPreemption(run_id)]
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
        module = load_module(ckpt.best_model_path, map_location=module.device)
    summary = {"train_seconds": train_seconds, "epochs": float(trainer.current_epoch)}
    summary.update(sample_and_log(cfg, module, dm, client, run_id, run_dir))
    tracking.log_metrics(client, run_id, summary)
    for path in (ckpt.best_model_path, ckpt.last_model_path):
        if path:
            client.log_artifact(run_id, path, "checkpoints")
    if ckpt.best_model_path:
        from lfads_lightning.runs import schema

        schema.record_best_checkpoint(
            client, run_id, f"checkpoints/{Path(ckpt.best_model_path).name}"
        )
    return summary


def sample_and_log(
    cfg: LfadsConfig, module: Any, dm: Any, client: Any, run_id: str, run_dir: Path
) -> dict[str, float]:
    """Posterior-sample every split, write the outputs, log metrics and figures to the run."""
    from lfads_lightning.evaluation.posterior import posterior_metrics
    from lfads_lightning.worker.sampling import sample_all, write_output

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
    from lfads_lightning.evaluation import figures

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
