"""The LFADS network: encoders, controller, generator, factors and per-session readin/readout.

Pure PyTorch (no Lightning) so that the maths can be tested on its own and reused by sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfads_lightning.config import ModelConfig
from lfads_lightning.model import fused, fused_decoder, native
from lfads_lightning.model.gru import BidirectionalClippedGRU, ClippedGRUCell
from lfads_lightning.model.layers import LfadsOutput, NormalizedLinear, lag_ci_states
from lfads_lightning.model.priors import AutoregressivePrior, GaussianICPrior
from lfads_lightning.model.recon import make_reconstruction


class LFADS(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        encod_dims: list[int],
        recon_dims: list[int],
        encod_seq_len: int,
        recon_seq_len: int,
        ext_input_dim: int = 0,
    ) -> None:
        super().__init__()
        if len(encod_dims) != len(recon_dims):
            raise ValueError("encod_dims and recon_dims need one entry per session")
        if len(encod_dims) > 1 and cfg.readin_dim == 0:
            raise ValueError("multi-session data needs model.readin_dim > 0 (a shared input space)")
        if cfg.readin_dim == 0 and len(encod_dims) == 1:
            self.readins = nn.ModuleList([nn.Identity()])
            enc_in = encod_dims[0]
        else:
            self.readins = nn.ModuleList([nn.Linear(d, cfg.readin_dim) for d in encod_dims])
            enc_in = cfg.readin_dim
        self.cfg = cfg
        self.encod_seq_len = encod_seq_len
        self.recon_seq_len = recon_seq_len
        self.ext_input_dim = ext_input_dim
        self.recon = make_reconstruction(cfg.recon, cfg.zig_min_value)
        self.use_controller = cfg.ci_enc_dim > 0 and cfg.con_dim > 0 and cfg.co_dim > 0
        co_dim = cfg.co_dim if self.use_controller else 0
        self.co_dim = co_dim

        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.ic_encoder = BidirectionalClippedGRU(enc_in, cfg.ic_enc_dim, cfg.cell_clip)
        self.ic_linear = nn.Linear(2 * cfg.ic_enc_dim, 2 * cfg.ic_dim)
        self.ic_to_g0 = nn.Linear(cfg.ic_dim, cfg.gen_dim)
        if self.use_controller:
            self.ci_encoder = BidirectionalClippedGRU(enc_in, cfg.ci_enc_dim, cfg.cell_clip)
            self.controller = ClippedGRUCell(
                2 * cfg.ci_enc_dim + cfg.fac_dim, cfg.con_dim, cfg.cell_clip
            )
            self.con_h0 = nn.Parameter(torch.zeros(cfg.con_dim))
            self.co_linear = nn.Linear(cfg.con_dim, 2 * co_dim)
            self.co_prior = AutoregressivePrior(co_dim, cfg.co_prior_tau, cfg.co_prior_nvar)
        self.generator = ClippedGRUCell(co_dim + ext_input_dim, cfg.gen_dim, cfg.cell_clip)
        self.factors = NormalizedLinear(cfg.gen_dim, cfg.fac_dim)
        n_params = self.recon.n_params
        self.readouts = nn.ModuleList([nn.Linear(cfg.fac_dim, d * n_params) for d in recon_dims])
        self.ic_prior = GaussianICPrior(cfg.ic_dim, cfg.ic_prior_var)
        # Fast path only: draw every dropout mask with the reference path's calls, in its order
        # (same masks under one seed; slower). The equality tests set it.
        self.reference_draws = False

    # ------------------------------------------------------------------ helpers

    def recurrent_weight_groups(self) -> dict[str, list[Tensor]]:
        """Recurrent kernels by L2 group (gen, con, ic_enc, ci_enc)."""
        groups = {
            "gen": self.generator.recurrent_weights(),
            "ic_enc": self.ic_encoder.recurrent_weights(),
        }
        if self.use_controller:
            groups["con"] = self.controller.recurrent_weights()
            groups["ci_enc"] = self.ci_encoder.recurrent_weights()
        return groups

    def init_readout_bias(self, session: int, data_mean: Tensor) -> None:
        """Start the readout at the data's per-neuron mean so early epochs are not wasted."""
        bias = self.recon.init_bias(data_mean.float())
        with torch.no_grad():
            self.readouts[session].bias.copy_(bias.reshape(-1))

    def init_readin_pca(self, session: int, data: Tensor, freeze: bool = False) -> None:
        """Initialise a session's readin with its top principal components (for stitching)."""
        readin = self.readins[session]
        if not isinstance(readin, nn.Linear):
            raise ValueError("PCA readin needs model.readin_dim > 0")
        x = data.reshape(-1, data.shape[-1]).float()
        mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(readin.out_features, v.shape[0])
        with torch.no_grad():
            readin.weight.zero_()
            readin.weight[:k] = v[:k]
            readin.bias.copy_(-(readin.weight @ mean))
        readin.requires_grad_(not freeze)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        encod_data: Tensor,
        session: int = 0,
        ext_input: Tensor | None = None,
        sample_posteriors: bool = True,
    ) -> LfadsOutput:
        if self.ext_input_dim > 0 and ext_input is None:
            raise ValueError("this model was built with external inputs; pass ext_input")
        if self.cfg.fast_path:
            return self._forward_fast(encod_data, session, ext_input, sample_posteriors)
        return self._forward_reference(encod_data, session, ext_input, sample_posteriors)

    def _forward_reference(
        self, encod_data: Tensor, session: int, ext_input: Tensor | None, sample_posteriors: bool
    ) -> LfadsOutput:
        """The equations as written: one autograd op at a time, bin by bin."""
        cfg = self.cfg
        batch = encod_data.shape[0]
        steps = self.recon_seq_len
        x = self.dropout(self.readins[session](encod_data))

        # Initial condition posterior.
        ic_f, ic_b = self.ic_encoder(x)
        ic_h = self.dropout(torch.cat([ic_f[:, -1], ic_b[:, 0]], -1))
        ic_mean, ic_logvar = self.ic_linear(ic_h).chunk(2, -1)
        ic_var, ic_sample = self._ic_posterior(ic_mean, ic_logvar, sample_posteriors)
        gen_h = self.ic_to_g0(ic_sample)
        factor_w = self.factors.normalized_weight()
        fac = self.dropout(gen_h) @ factor_w.T

        # Controller inputs, projected for all bins at once; zero over the forward bins.
        if self.use_controller:
            ci_f, ci_b = self.ci_encoder(x)
            ci = lag_ci_states(ci_f, ci_b, cfg.ci_lag)
            ci = F.pad(ci, (0, 0, 0, steps - ci.shape[1]))
            ci_dim = ci.shape[-1]
            w_ci = self.controller.weight_ih[:ci_dim]
            w_fac = self.controller.weight_ih[ci_dim:]
            con_proj = (self.dropout(ci) @ w_ci + self.controller.bias).unbind(1)
            con_h = self.con_h0.expand(batch, -1)
            co_noise = (
                torch.randn(steps, batch, self.co_dim, device=x.device)
                if sample_posteriors
                else None
            )
        if self.ext_input_dim > 0:
            w_ext = self.generator.weight_ih[self.co_dim :]
            ext_proj = (ext_input @ w_ext).unbind(1)
        w_co = self.generator.weight_ih[: self.co_dim]

        factors, gen_states, co_means, co_vars, co_samples = [], [], [], [], []
        for t in range(steps):
            gen_proj = self.generator.bias.expand(batch, -1)
            if self.use_controller:
                con_in = con_proj[t] + self.dropout(fac) @ w_fac
                con_h = self.controller.step(con_in, con_h)
                co_mean, co_logvar = self.co_linear(con_h).chunk(2, -1)
                co_var = torch.exp(co_logvar) + cfg.ic_post_var_min
                if sample_posteriors and cfg.variational:
                    co = co_mean + torch.sqrt(co_var) * co_noise[t]
                else:
                    co = co_mean
                gen_proj = gen_proj + co @ w_co
                co_means.append(co_mean)
                co_vars.append(co_var)
                co_samples.append(co)
            if self.ext_input_dim > 0:
                gen_proj = gen_proj + ext_proj[t]
            gen_h = self.generator.step(gen_proj, gen_h)
            fac = self.dropout(gen_h) @ factor_w.T
            factors.append(fac)
            gen_states.append(gen_h)

        factors_t = torch.stack(factors, 1)
        params = self.readouts[session](factors_t)
        params = params.reshape(batch, steps, -1, self.recon.n_params)
        empty = encod_data.new_zeros(batch, steps, 0)
        return LfadsOutput(
            params=params,
            factors=factors_t,
            gen_states=torch.stack(gen_states, 1),
            ic_mean=ic_mean,
            ic_var=ic_var,
            ic_sample=ic_sample,
            co_means=torch.stack(co_means, 1) if co_means else empty,
            co_vars=torch.stack(co_vars, 1) if co_vars else empty,
            co_samples=torch.stack(co_samples, 1) if co_samples else empty,
        )

    # ------------------------------------------------------------------ fast path

    def _ic_posterior(
        self, ic_mean: Tensor, ic_logvar: Tensor, sample_posteriors: bool
    ) -> tuple[Tensor, Tensor]:
        """(variance, sample) of the initial-condition posterior; both paths share it."""
        if not self.cfg.variational:
            return torch.zeros_like(ic_mean), ic_mean
        ic_var = torch.exp(ic_logvar) + self.cfg.ic_post_var_min
        if not sample_posteriors:
            return ic_var, ic_mean
        return ic_var, ic_mean + torch.sqrt(ic_var) * torch.randn_like(ic_mean)

    def _dropout_mask(self, *shape: int, like: Tensor) -> Tensor | None:
        """Inverted-dropout mask (0 or 1 / (1 - p)), None when dropout is off (eval mode).

        On CPU the native Philox sampler draws it (~3x cheaper than torch.rand >= p, itself
        ~3x cheaper than nn.Dropout's Bernoulli draw); with `reference_draws` the mask is
        dropout(ones), the exact draw the reference makes.
        """
        if not self.dropout.training:
            return None
        if self.reference_draws:
            return self.dropout(like.new_ones(shape))
        p = self.dropout.p
        if p <= 0.0:
            return None
        if p >= 1.0:
            return like.new_zeros(shape)
        mask = native.dropout_mask(shape, p, like)  # CPU: Philox in native code, ~3x cheaper
        if mask is not None:
            return mask
        return torch.rand(shape, dtype=like.dtype, device=like.device).ge_(p).mul_(1.0 / (1.0 - p))

    def _apply_dropout(self, x: Tensor) -> Tensor:
        mask = self._dropout_mask(*x.shape, like=x)
        return x if mask is None else x * mask

    def _decoder_masks(
        self, steps: int, batch: int, like: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Dropout masks of the decoder loop [T, B, fac] (controller input) and [T, B, gen].

        Drawn in one call each; with `reference_draws`, bin by bin in the reference's order.
        """
        if not self.dropout.training:
            return None, None
        fac_dim, gen_dim = self.cfg.fac_dim, self.cfg.gen_dim
        if not self.reference_draws:
            mask_fac = self._dropout_mask(steps, batch, fac_dim, like=like)
            return (mask_fac if self.use_controller else None), self._dropout_mask(
                steps, batch, gen_dim, like=like
            )
        fac, gen = [], []
        for _ in range(steps):
            if self.use_controller:
                fac.append(self._dropout_mask(batch, fac_dim, like=like))
            gen.append(self._dropout_mask(batch, gen_dim, like=like))
        return (torch.stack(fac) if fac else None), torch.stack(gen)

    def _encode_fast(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Both bidirectional encoders -> (final IC states [B, 2H], CI states [T, B, 2H'] or None).

        Directions of the same size share one batched scan; backward directions read the
        time-reversed input. Time-major throughout.
        """
        batch, steps, dim = x.shape
        x_tm = x.transpose(0, 1)
        x2 = torch.stack([x_tm, x_tm.flip(0)]).reshape(2, steps * batch, dim)
        encoders = [self.ic_encoder] + ([self.ci_encoder] if self.use_controller else [])
        groups = (
            [encoders] if len({e.hidden_size for e in encoders}) == 1 else [[e] for e in encoders]
        )
        states: list[Tensor] = []
        for group in groups:
            cells = [c for e in group for c in (e.fwd, e.bwd)]
            x_in = x2.repeat(len(group), 1, 1) if len(group) > 1 else x2
            bias = torch.stack([c.bias for c in cells]).unsqueeze(1)
            proj = torch.baddbmm(bias, x_in, torch.stack([c.weight_ih for c in cells]))
            h0 = torch.cat([e.h0 for e in group]).unsqueeze(1).expand(-1, batch, -1)
            out = fused.gru_scan(
                proj.reshape(len(cells), steps, batch, -1),
                h0,
                torch.stack([c.weight_hh_gates for c in cells]),
                torch.stack([c.weight_hh_cand for c in cells]),
                self.cfg.cell_clip,
            )
            states.extend(out.unbind(0))
        ic_h = torch.cat([states[0][-1], states[1][-1]], -1)
        if not self.use_controller:
            return ic_h, None
        ci_f, ci_b, lag = states[2], states[3].flip(0), self.cfg.ci_lag
        if lag > 0:
            ci_f = F.pad(ci_f, (0, 0, 0, 0, lag, 0))[:steps]
            ci_b = F.pad(ci_b, (0, 0, 0, 0, 0, lag))[lag:]
        return ic_h, torch.cat([ci_f, ci_b], -1)

    def _forward_fast(
        self, encod_data: Tensor, session: int, ext_input: Tensor | None, sample_posteriors: bool
    ) -> LfadsOutput:
        """Same equations and the same random draws, in order, as `_forward_reference`."""
        cfg = self.cfg
        batch, steps = encod_data.shape[0], self.recon_seq_len
        x = self._apply_dropout(self.readins[session](encod_data))
        ic_h, ci = self._encode_fast(x)
        ic_mean, ic_logvar = self.ic_linear(self._apply_dropout(ic_h)).chunk(2, -1)
        ic_var, ic_sample = self._ic_posterior(ic_mean, ic_logvar, sample_posteriors)
        gen_h0 = self.ic_to_g0(ic_sample)
        factor_w = self.factors.normalized_weight()
        fac0 = self._apply_dropout(gen_h0) @ factor_w.T
        gen = self.generator
        gen_base = gen.bias.expand(steps, batch, -1)
        if self.ext_input_dim > 0:
            ext_proj = ext_input.transpose(0, 1) @ gen.weight_ih[self.co_dim :]
            gen_base = gen_base + ext_proj
        if not self.use_controller:
            _, mask_gen = self._decoder_masks(steps, batch, like=x)
            gen_states = fused.gru_scan(
                gen_base.unsqueeze(0),
                gen_h0.unsqueeze(0),
                gen.weight_hh_gates.unsqueeze(0),
                gen.weight_hh_cand.unsqueeze(0),
                cfg.cell_clip,
            )[0]
            dropped = gen_states if mask_gen is None else gen_states * mask_gen
            factors = dropped @ factor_w.T
            co_means = co_vars = co_samples = encod_data.new_zeros(steps, batch, 0)
        else:
            con = self.controller
            ci = F.pad(ci, (0, 0, 0, 0, 0, steps - ci.shape[0]))
            ci_mask = self._dropout_mask(batch, steps, ci.shape[-1], like=x)
            if ci_mask is not None:
                ci = ci * ci_mask.transpose(0, 1)
            ci_dim = ci.shape[-1]
            con_proj = torch.addmm(con.bias, ci.reshape(-1, ci_dim), con.weight_ih[:ci_dim])
            noise = (
                torch.randn(steps, batch, self.co_dim, device=x.device)
                if sample_posteriors
                else None
            )
            mask_fac, mask_gen = self._decoder_masks(steps, batch, like=x)
            weights = (
                con.weight_ih[ci_dim:],
                con.weight_hh_gates,
                con.weight_hh_cand,
                self.co_linear.weight.T,
                self.co_linear.bias,
                gen.weight_ih[: self.co_dim],
                gen.weight_hh_gates,
                gen.weight_hh_cand,
                factor_w.T,
            )
            gen_states, factors, co_means, co_vars, co_samples = fused_decoder.decoder_scan(
                con_proj.reshape(steps, batch, -1),
                gen_base,
                self.con_h0.expand(batch, -1),
                gen_h0,
                fac0,
                weights,
                noise.to(x.dtype) if noise is not None and cfg.variational else None,
                mask_fac,
                mask_gen,
                cfg.cell_clip,
                cfg.ic_post_var_min,
            )
        params = self.readouts[session](factors).transpose(0, 1)
        return LfadsOutput(
            params=params.reshape(batch, steps, -1, self.recon.n_params),
            factors=factors.transpose(0, 1),
            gen_states=gen_states.transpose(0, 1),
            ic_mean=ic_mean,
            ic_var=ic_var,
            ic_sample=ic_sample,
            co_means=co_means.transpose(0, 1),
            co_vars=co_vars.transpose(0, 1),
            co_samples=co_samples.transpose(0, 1),
        )

    def kl_terms(self, out: LfadsOutput) -> tuple[Tensor, Tensor]:
        """(KL of the IC, KL of the inferred inputs), each averaged over trials."""
        zero = out.ic_mean.new_zeros(())
        if not self.cfg.variational:
            return zero, zero
        kl_ic = self.ic_prior.kl(out.ic_mean, out.ic_var).mean()
        kl_co = zero
        if self.use_controller:
            kl_co = self.co_prior.kl(out.co_samples, out.co_means, out.co_vars).mean()
        return kl_ic, kl_co
