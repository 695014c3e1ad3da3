"""The LightningModule's objective on real batches: sample validation, loss composition,
multi-session training, non-Poisson reconstructions."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch

from lfads_lightning.config import LfadsConfig
from lfads_lightning.data.datamodule import LfadsDataModule
from lfads_lightning.data.format import write_session
from lfads_lightning.data.synth import make_dataset
from lfads_lightning.worker.setup import build_module

SMALL = dict(ic_enc_dim=6, ci_enc_dim=4, con_dim=4, co_dim=2, ic_dim=3, gen_dim=8, fac_dim=3)


def _cfg(paths, **model) -> LfadsConfig:
    cfg = LfadsConfig()
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, paths=[str(p) for p in paths], synth=None, batch_size=8),
        model=dataclasses.replace(cfg.model, **{**SMALL, **model}),
        train=dataclasses.replace(cfg.train, progress_bar=False, threads=1),
    )


def _lorenz(tmp_path, name="d.h5", **params):
    path = tmp_path / name
    make_dataset(
        "lorenz",
        path,
        seed=4,
        n_conditions=3,
        trials_per_condition=5,
        n_steps=12,
        n_neurons=6,
        **params,
    )
    return path


def test_sample_validation_entries_never_reach_the_training_loss(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg([_lorenz(tmp_path)], dropout_rate=0.0, cd_rate=0.0)
    dm = LfadsDataModule(cfg.data.paths, 8, sv_rate=0.3, sv_seed=1)
    module = build_module(
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sv_rate=0.3)), dm
    )
    batch = next(iter(dm.train_dataloader()))
    held = batch.sv_mask == 0
    assert 0.2 < float(held.float().mean()) < 0.4
    torch.manual_seed(1)
    terms, _ = module._step(batch, training=True)
    # Corrupt only the held-out entries (in input and target): the training recon must not move.
    enc = batch.encod_data.clone()
    enc[held] = 50.0
    recon = batch.recon_data.clone()
    recon[:, : enc.shape[1], : enc.shape[2]][held] = 50.0
    torch.manual_seed(1)
    corrupted, _ = module._step(batch._replace(encod_data=enc, recon_data=recon), training=True)
    assert float(corrupted["recon"]) == pytest.approx(float(terms["recon"]), rel=1e-6)
    # ...while validation scores exactly those entries.
    torch.manual_seed(1)
    val, _ = module._step(batch, training=False)
    torch.manual_seed(1)
    val_corrupt, _ = module._step(batch._replace(recon_data=recon), training=False)
    assert float(val_corrupt["recon_sv"]) > 10 * float(val["recon_sv"])


def test_total_loss_is_the_documented_combination(tmp_path):
    cfg = _cfg([_lorenz(tmp_path)])
    cfg = dataclasses.replace(
        cfg, loss=dataclasses.replace(cfg.loss, kl_increase_epoch=4, l2_increase_epoch=9)
    )
    dm = LfadsDataModule(cfg.data.paths, 8)
    module = build_module(cfg, dm)
    batch = next(iter(dm.train_dataloader()))
    terms, _ = module._step(batch, training=True)
    lc = cfg.loss
    ramp_kl, ramp_l2 = 1 / 5, 1 / 10  # epoch 0: (0 + 1) / (increase + 1)
    expected = lc.loss_scale * (
        terms["recon"]
        + ramp_l2 * terms["l2"]
        + ramp_kl * (lc.kl_ic_scale * terms["kl_ic"] + lc.kl_co_scale * terms["kl_co"])
    )
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms["kl_ic"]) > 0 and float(terms["kl_co"]) != 0 and float(terms["l2"]) > 0


def _fit(cfg, dm, epochs=2):
    module = build_module(cfg, dm)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_multi_session_training_with_pca_readin(tmp_path):
    a = _lorenz(tmp_path, "a.h5")
    b = tmp_path / "b.h5"
    make_dataset(
        "lorenz", b, seed=9, n_conditions=3, trials_per_condition=5, n_steps=12, n_neurons=9
    )
    cfg = _cfg([a, b], readin_dim=4, readin_pca_init=True)
    dm = LfadsDataModule(cfg.data.paths, 8)
    module, trainer = _fit(cfg, dm)
    assert [r.in_features for r in module.lfads.readins] == [6, 9]
    assert [r.out_features for r in module.lfads.readouts] == [6, 9]
    assert np.isfinite(float(trainer.callback_metrics["valid/recon_smth"]))


@pytest.mark.parametrize("recon", ["gaussian", "gamma", "zig", "mse"])
def test_continuous_reconstructions_train(tmp_path, recon):
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.gamma(2.0, 0.5, size=(n, 10, 4)).astype(np.float32) * (rng.random((n, 10, 4)) > 0.3)
        return {"encod_data": x, "recon_data": x.copy()}

    path = tmp_path / "calcium.h5"
    write_session(path, {"train": split(12), "valid": split(4)}, {})
    cfg = _cfg([path], recon=recon)
    dm = LfadsDataModule(cfg.data.paths, 8, recon=recon)
    _, trainer = _fit(cfg, dm)
    assert np.isfinite(float(trainer.callback_metrics["valid/recon_smth"]))
