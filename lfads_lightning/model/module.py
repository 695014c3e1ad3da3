"""LFADS as a LightningModule: the training objective, ramps, coordinated dropout, metrics.

The loss is loss_scale * (recon + ramp_l2 * L2 + ramp_kl * (kl_ic_scale * KL_ic + kl_co_scale * KL_co))
with recon the mean elementwise negative log-likelihood.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lfads_lightning.config import LossConfig, ModelConfig, TrainConfig, from_dict
from lfads_lightning.errors import TrainingDiverged
from lfads_lightning.model.augment import spike_jitter, temporal_shift
from lfads_lightning.model.network import LFADS, LfadsOutput


def ramp_value(epoch: int, start: int, increase: int) -> float:
    """Linear ramp from 0 to 1: clamp((epoch + 1 - start) / (increase + 1), 0, 1), epoch from 0."""
    return float(min(max((epoch + 1 - start) / (increase + 1), 0.0), 1.0))


def coordinated_dropout(
    data: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Drop entries of the encoder input; return (input, keep mask).

    Kept entries are scaled by 1 / (1 - rate). The loss later gets gradient only from the
    dropped entries, so the model cannot lower it by passing its input straight through.
    """
    if rate <= 0.0:
        return data, torch.ones_like(data)
    keep = (torch.rand(data.shape, device=data.device, generator=generator) >= rate).to(data.dtype)
    return data * keep / (1.0 - rate), keep


def cd_gradient_mask(keep: Tensor, recon_shape: torch.Size) -> Tensor:
    """1 where the reconstruction loss may pass gradient: dropped held-in entries of the observed
    window, and every held-out neuron and forward bin (the encoder never saw those)."""
    mask = keep.new_ones(recon_shape)
    t_enc, c_enc = keep.shape[1], keep.shape[2]
    mask[:, :t_enc, :c_enc] = 1.0 - keep
    return mask


def apply_gradient_mask(values: Tensor, mask: Tensor) -> Tensor:
    """Same forward values; gradient flows only where mask == 1."""
    return values * mask + (values * (1.0 - mask)).detach()


def l2_penalty(groups: dict[str, list[Tensor]], scales: dict[str, float]) -> Tensor:
    """sum_k scale_k * 0.5 * ||W_k||^2 over recurrent kernels, divided by the number penalised."""
    total, count = None, 0
    for name, weights in groups.items():
        scale = scales.get(name, 0.0)
        if scale == 0.0:
            continue
        for w in weights:
            term = scale * 0.5 * (w**2).sum()
            total = term if total is None else total + term
            count += w.numel()
    if total is None:
        return torch.zeros(())
    return total / count


class LfadsModule(L.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        loss: dict[str, Any],
        train: dict[str, Any],
        encod_dims: list[int],
        recon_dims: list[int],
        encod_seq_len: int,
        recon_seq_len: int,
        ext_input_dim: int = 0,
        sv_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg: ModelConfig = from_dict(ModelConfig, model)
        self.loss_cfg: LossConfig = from_dict(LossConfig, loss)
        self.train_cfg: TrainConfig = from_dict(TrainConfig, train)
        self.sv_rate = sv_rate
        self.lfads = LFADS(
            self.model_cfg, encod_dims, recon_dims, encod_seq_len, recon_seq_len, ext_input_dim
        )
        self.encod_dims = encod_dims
        self.recon_smth: float | None = None
        self._valid_outputs: list[dict[str, Tensor]] = []

    # ------------------------------------------------------------------ hyperparameters

    def apply_hyperparameters(
        self, model: ModelConfig, loss: LossConfig, train: TrainConfig
    ) -> None:
        """Take the values of these (typed) config sections: the member's own config.

        Used after restoring a checkpoint (PBT exploit): restoring an optimiser state dict
        silently brings back the old learning rate, so the config's values are applied again.
        The sections are copied field by field (the network shares `model_cfg`).
        """
        for name, target, source in (
            ("model", self.model_cfg, model),
            ("loss", self.loss_cfg, loss),
            ("train", self.train_cfg, train),
        ):
            for f in dataclasses.fields(source):
                setattr(target, f.name, getattr(source, f.name))
            self.hparams[name] = dataclasses.asdict(target)
        self.lfads.dropout.p = self.model_cfg.dropout_rate
        if self._trainer is not None:
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = self.train_cfg.lr
                    group["weight_decay"] = self.train_cfg.weight_decay

    def ramps(self, epoch: int | None = None) -> tuple[float, float]:
        epoch = self.current_epoch if epoch is None else epoch
        lc = self.loss_cfg
        return (
            ramp_value(epoch, lc.kl_start_epoch, lc.kl_increase_epoch),
            ramp_value(epoch, lc.l2_start_epoch, lc.l2_increase_epoch),
        )

    # ------------------------------------------------------------------ objective

    def _prepare_input(self, batch: Any, training: bool) -> tuple[Tensor, Tensor | None]:
        enc = batch.encod_data
        if self.sv_rate > 0:
            enc = enc * batch.sv_mask / (1.0 - self.sv_rate)
        keep = None
        if training and self.model_cfg.cd_rate > 0:
            enc, keep = coordinated_dropout(enc, self.model_cfg.cd_rate)
        return enc, keep

    def _step(self, batch: Any, training: bool) -> tuple[dict[str, Tensor], LfadsOutput]:
        session = int(batch.session)
        if training and self.model_cfg.temporal_shift_std > 0:
            batch = temporal_shift(
                batch, self.model_cfg.temporal_shift_std, self.model_cfg.temporal_shift_max
            )
        if training and self.model_cfg.spike_jitter_std > 0:
            batch = spike_jitter(batch, self.model_cfg.spike_jitter_std)
        enc, keep = self._prepare_input(batch, training)
        ext = batch.ext_input if self.lfads.ext_input_dim > 0 else None
        out = self.lfads(enc, session=session, ext_input=ext, sample_posteriors=True)
        nll = self.lfads.recon.nll(out.params, batch.recon_data)
        if keep is not None:
            nll = apply_gradient_mask(nll, cd_gradient_mask(keep, nll.shape))
        weight = torch.ones_like(nll)
        if self.sv_rate > 0:
            t_enc, c_enc = batch.sv_mask.shape[1:]
            weight[:, :t_enc, :c_enc] = batch.sv_mask
        recon = (nll * weight).sum() / weight.sum()
        kl_ic, kl_co = self.lfads.kl_terms(out)
        lc = self.loss_cfg
        scales = {
            "gen": lc.l2_gen_scale,
            "con": lc.l2_con_scale,
            "ic_enc": lc.l2_ic_enc_scale,
            "ci_enc": lc.l2_ci_enc_scale,
        }
        l2 = l2_penalty(self.lfads.recurrent_weight_groups(), scales).to(recon)
        ramp_kl, ramp_l2 = self.ramps()
        total = lc.loss_scale * (
            recon + ramp_l2 * l2 + ramp_kl * (lc.kl_ic_scale * kl_ic + lc.kl_co_scale * kl_co)
        )
        terms = {"loss": total, "recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2}
        if self.sv_rate > 0 and not training:
            held = 1.0 - weight
            terms["recon_sv"] = (nll * held).sum() / held.sum().clamp_min(1.0)
        return terms, out

    def _log_epoch_means(self, values: dict[str, Any], batch_size: int, shown: str = "") -> None:
        """Batch-size-weighted epoch means; `shown` also goes on the progress bar."""
        for name, value in values.items():
            self.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                prog_bar=name == shown,
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        terms, _ = self._step(batch, training=True)
        ramp_kl, ramp_l2 = self.ramps()
        values = {f"train/{name}": value for name, value in terms.items()}
        values.update({"ramp/kl": ramp_kl, "ramp/l2": ramp_l2})
        self._log_epoch_means(values, batch.encod_data.shape[0], shown="train/loss")
        if not torch.isfinite(terms["loss"]):
            raise TrainingDiverged(self.current_epoch, self.global_step)
        return terms["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        terms, out = self._step(batch, training=False)
        bs = batch.encod_data.shape[0]
        self._log_epoch_means(
            {f"valid/{name}": value for name, value in terms.items()}, bs, shown="valid/recon"
        )
        self._valid_outputs.append(
            {
                "session": batch.session.detach().cpu(),
                "rates": self.lfads.recon.mean(out.params).detach().cpu(),
                "recon": batch.recon_data.detach().cpu(),
                "truth": batch.truth.detach().cpu(),
                "recon_nll": terms["recon"].detach().cpu() * bs,
                "n": torch.tensor(bs),
            }
        )

    def on_validation_epoch_start(self) -> None:
        self._valid_outputs = []

    def on_validation_epoch_end(self) -> None:
        outputs, self._valid_outputs = self._valid_outputs, []
        if self.trainer.sanity_checking or not outputs:
            return
        # Computed here rather than read from callback_metrics, which Lightning fills in only
        # after this hook (it would hold the previous epoch's value).
        current = float(sum(o["recon_nll"] for o in outputs) / sum(o["n"] for o in outputs))
        if not np.isfinite(current) or not all(torch.isfinite(o["rates"]).all() for o in outputs):
            raise TrainingDiverged(
                self.current_epoch, self.global_step, "the validation rates are NaN or infinite"
            )
        self.recon_smth = (
            current if self.recon_smth is None else 0.3 * self.recon_smth + 0.7 * current
        )
        self.log("valid/recon_smth", self.recon_smth, prog_bar=True)
        if self.model_cfg.recon == "poisson":
            for name, value in self._epoch_metrics(outputs).items():
                self.log(f"valid/{name}", value)

    def _epoch_metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, float]:
        """Bits per spike (held-in), co-bps, fp-bps and rate R2 on the validation trials."""
        from lfads_lightning.evaluation.posterior import rate_metrics

        per_session: dict[int, list[dict[str, Tensor]]] = {}
        for o in outputs:
            per_session.setdefault(int(o["session"]), []).append(o)
        collected: dict[str, list[float]] = {}
        for session, items in per_session.items():
            truth = torch.cat([o["truth"] for o in items]).numpy()
            values = rate_metrics(
                torch.cat([o["rates"] for o in items]).numpy(),
                torch.cat([o["recon"] for o in items]).numpy(),
                truth if truth.size else None,
                self.lfads.encod_seq_len,
                self.encod_dims[session],
            )
            for k, v in values.items():
                if np.isfinite(v):
                    collected.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in collected.items()}

    # ------------------------------------------------------------------ optimiser and state

    def configure_optimizers(self) -> Any:
        tc = self.train_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, weight_decay=tc.weight_decay
        )
        if not tc.lr_scheduler:
            return opt
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience, min_lr=tc.lr_min
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": "valid/recon_smth"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["recon_smth"] = self.recon_smth
        checkpoint["config_sections"] = {
            "model": dataclasses.asdict(self.model_cfg),
            "loss": dataclasses.asdict(self.loss_cfg),
            "train": dataclasses.asdict(self.train_cfg),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.recon_smth = checkpoint.get("recon_smth")
