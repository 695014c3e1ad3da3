"""The controller + inferred-input + generator + factor loop of the fast path (see fused.py).

`decoder_scan` is an autograd Function with a hand-written backward; its loops over bins run
natively on CPU (kernels.cpp) or with torch ops (`_decoder_forward_loop`,
`_decoder_backward_loop`). Both store the same tape (fused._GruTape per recurrence) and share
the weight-gradient GEMMs, one over all bins and trials per weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from lfads_lightning.model import native
from lfads_lightning.model.fused import _GruTape, _rows, needs_grad


class _DecoderScan(Function):
    """Controller -> inferred input -> generator -> factors, unrolled over T bins (time-major).

    Per bin t (a = dropped-out previous factors, m/lv = controller output mean / log-variance):
        a_t = f_{t-1} * mf_t;   c_t = GRU_con(con_proj_t + a_t W_f, c_{t-1})
        [m_t, lv_t] = c_t W_o + b_o;  v_t = exp(lv_t) + v_min;  u_t = m_t + sqrt(v_t) * eps_t
        g_t = GRU_gen(gen_base_t + u_t W_u, g_{t-1});  f_t = (g_t * mg_t) W_fac
    Backward, per bin from the last (G_* are the gradients arriving at the outputs):
        df_t = G_f,t + (dx_con,t+1 W_f^T) * mf_t+1;   dg_t += G_g,t + (df_t W_fac^T) * mg_t
        dx_gen,t = GRU backward;  du_t = G_u,t + dx_gen,t W_u^T
        dm_t = G_m,t + du_t;  dlv_t = (G_v,t + du_t * eps_t / (2 sqrt(v_t))) * exp(lv_t)
        dc_t += [dm_t, dlv_t] W_o^T;  dx_con,t = GRU backward
    and the weight gradients are one matmul each over all bins (e.g. dW_f = A^T dX_con).
    """

    @staticmethod
    def forward(
        ctx: Any,
        con_proj: Tensor,
        gen_base: Tensor,
        con_h0: Tensor,
        gen_h0: Tensor,
        fac0: Tensor,
        w_fac: Tensor,
        con_wg: Tensor,
        con_wc: Tensor,
        co_wt: Tensor,
        co_b: Tensor,
        w_u: Tensor,
        gen_wg: Tensor,
        gen_wc: Tensor,
        fac_wt: Tensor,
        noise: Tensor | None,
        mask_fac: Tensor | None,
        mask_gen: Tensor | None,
        clip: float,
        var_min: float,
        grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        steps, batch = con_proj.shape[:2]
        co, n_fac = co_b.shape[0] // 2, fac0.shape[-1]
        weights = (w_fac, con_wg, con_wc, co_wt, co_b, w_u, gen_wg, gen_wc, fac_wt)
        ctx.native = native.usable(con_proj, gen_base, con_h0, gen_h0, fac0, *weights)
        scratch = ctx.native and not grad  # no backward: per-bin buffers one bin deep
        bins = 1 if scratch else steps
        con, gen = _GruTape(con_h0, steps, scratch), _GruTape(gen_h0, steps, scratch)
        fac = fac0.new_empty(steps + 1, batch, n_fac)
        fac[0] = fac0
        a = fac0.new_empty(bins, batch, n_fac) if mask_fac is not None else fac[:steps]
        gm = gen_h0.new_empty(bins, batch, gen.hid) if mask_gen is not None else gen.states()
        out = co_b.new_empty(steps, batch, 2 * co)
        var = co_b.new_empty(steps, batch, co)
        std = torch.empty_like(var) if noise is not None else None
        u = torch.empty_like(var) if noise is not None else out[..., :co]
        if ctx.native:
            noise, mask_fac, mask_gen = (
                None if m is None else m.contiguous() for m in (noise, mask_fac, mask_gen)
            )
            native.ops().decoder_forward(
                con_proj, gen_base, *con.native_args(), *gen.native_args(),
                fac, a, gm, out, var, std, u, list(weights), noise, mask_fac, mask_gen,
                clip, var_min,
            )  # fmt: skip
        else:
            _decoder_forward_loop(
                con, gen, (con_proj, gen_base), (fac, a, gm, out, var, std, u), weights,
                (noise, mask_fac, mask_gen), clip, var_min,
            )  # fmt: skip
        ctx.tapes, ctx.clip = (con, gen), clip
        ctx.save_for_backward(w_fac, con_wg, con_wc, co_wt, w_u, gen_wg, gen_wc, fac_wt)
        ctx.buffers = (a, gm, out, std, u, noise, mask_fac, mask_gen)
        return gen.states(), fac[1:], out[..., :co], var, u

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_gen: Tensor, g_fac: Tensor, g_mean: Tensor, g_var: Tensor, g_u: Tensor
    ) -> tuple[Tensor | None, ...]:
        con, gen = ctx.tapes
        weights = ctx.saved_tensors
        a, gm, out, std, u, noise, mask_fac, mask_gen = ctx.buffers
        grads = (g_gen, g_fac, g_mean, g_var, g_u)
        masks = (noise, std, mask_fac, mask_gen)
        if ctx.native:
            con_dx, gen_dx, d_con, d_gen, d_fac0, dfac, dout = _decoder_backward_native(
                con, gen, grads, out, masks, weights, ctx.clip
            )
        else:
            con_dx, gen_dx, d_con, d_gen, d_fac0, dfac, dout = _decoder_backward_loop(
                con, gen, grads, out, masks, weights, ctx.clip
            )
        n_con, n_gen = con.hid, gen.hid
        con_dwg, con_dwc = con.weight_grads(con_dx[..., : 2 * n_con], con_dx[..., 2 * n_con :])
        gen_dwg, gen_dwc = gen.weight_grads(gen_dx[..., : 2 * n_gen], gen_dx[..., 2 * n_gen :])
        del ctx.tapes, ctx.buffers

        def outer(left: Tensor, right: Tensor) -> Tensor:  # sum over all bins and trials
            return left.reshape(-1, left.shape[-1]).t() @ right.reshape(-1, right.shape[-1])

        return (
            con_dx, gen_dx, d_con, d_gen, d_fac0,
            outer(a, con_dx), con_dwg, con_dwc,
            outer(con.states(), dout), dout.sum((0, 1)), outer(u, gen_dx), gen_dwg, gen_dwc,
            outer(gm, dfac),
            None, None, None, None, None, None,
        )  # fmt: skip


def _decoder_forward_loop(con, gen, inputs, buffers, weights, masks, clip, var_min) -> None:
    """The decoder's forward with torch ops (see _DecoderScan's docstring); fills the buffers."""
    con_proj, gen_base = inputs
    fac, a, gm, out, var, std, u = buffers
    w_fac, con_wg, con_wc, co_wt, co_b, w_u, gen_wg, gen_wc, fac_wt = weights
    noise, mask_fac, mask_gen = masks
    co, steps = var.shape[-1], var.shape[0]
    fac_t, a_t, gm_t, out_t, var_t = (x.unbind(0) for x in (fac, a, gm, out, var))
    mean_t, logvar_t, u_t = out[..., :co].unbind(0), out[..., co:].unbind(0), u.unbind(0)
    noise_t, std_t = (noise.unbind(0), std.unbind(0)) if noise is not None else ((), ())
    mf_t = mask_fac.unbind(0) if mask_fac is not None else ()
    mg_t = mask_gen.unbind(0) if mask_gen is not None else ()
    con_proj_t, gen_base_t = con_proj.unbind(0), gen_base.unbind(0)
    hc, hg = 2 * con.hid, 2 * gen.hid
    for t in range(steps):
        if mask_fac is not None:
            torch.mul(fac_t[t], mf_t[t], out=a_t[t])
        x = torch.addmm(con_proj_t[t], a_t[t], w_fac)
        h_con = con.step(t, x[:, :hc], x[:, hc:], con_wg, con_wc, clip)
        torch.addmm(co_b, h_con, co_wt, out=out_t[t])
        torch.exp(logvar_t[t], out=var_t[t]).add_(var_min)
        if noise is not None:
            torch.addcmul(mean_t[t], torch.sqrt(var_t[t], out=std_t[t]), noise_t[t], out=u_t[t])
        x = torch.addmm(gen_base_t[t], u_t[t], w_u)
        h_gen = gen.step(t, x[:, :hg], x[:, hg:], gen_wg, gen_wc, clip)
        if mask_gen is not None:
            torch.mul(h_gen, mg_t[t], out=gm_t[t])
        torch.mm(gm_t[t], fac_wt, out=fac_t[t + 1])


def _decoder_backward_native(con, gen, grads, out, masks, weights, clip):
    """The decoder's backward-through-time in the native loop (same equations as below)."""
    w_fac, con_wg, con_wc, co_wt, w_u, gen_wg, gen_wc, fac_wt = weights
    noise, std, mask_fac, mask_gen = masks
    steps, batch = out.shape[:2]
    transposed = [
        w.transpose(-1, -2).contiguous()
        for w in (w_fac, con_wg, con_wc, co_wt, w_u, gen_wg, gen_wc, fac_wt)
    ]
    con_dx = out.new_empty(steps, batch, 3 * con.hid)
    gen_dx = out.new_empty(steps, batch, 3 * gen.hid)
    dfac = out.new_empty(steps, batch, fac_wt.shape[-1])
    dout = torch.empty_like(out)
    d_con, d_gen, d_fac0 = native.ops().decoder_backward(
        *(_rows(g) for g in grads), *con.native_args(), *gen.native_args(), out,
        std, noise, mask_fac, mask_gen, transposed, con_dx, gen_dx, dfac, dout, clip,
    )  # fmt: skip
    return con_dx, gen_dx, d_con, d_gen, d_fac0, dfac, dout


def _decoder_backward_loop(con, gen, grads, out, masks, weights, clip):
    """The decoder's backward-through-time with torch ops (see _DecoderScan's docstring)."""
    w_fac, con_wg, con_wc, co_wt, w_u, gen_wg, gen_wc, fac_wt = weights
    g_gen, g_fac, g_mean, g_var, g_u = grads
    noise, std, mask_fac, mask_gen = masks
    co, steps = g_mean.shape[-1], g_mean.shape[0]
    con.prepare_backward(clip, con_wg, con_wc)
    gen.prepare_backward(clip, gen_wg, gen_wc)
    # dlv = (g_v + du * eps / (2 std)) * exp(lv) = g_v exp(lv) + du * [eps exp(lv) / (2 std)]
    exp_lv = torch.exp(out[..., co:])
    g_lv = g_var * exp_lv
    du_to_lv = (0.5 * noise / std).mul_(exp_lv) if noise is not None else None
    dfac, dout = torch.empty_like(g_fac), torch.empty_like(out)
    dfac_t, dm_t, dlv_t = dfac.unbind(0), dout[..., :co].unbind(0), dout[..., co:].unbind(0)
    g_gen_t, g_fac_t, g_mean_t, g_u_t, g_lv_t = (
        x.unbind(0) for x in (g_gen, g_fac, g_mean, g_u, g_lv)
    )
    dout_t = dout.unbind(0)
    du_to_lv_t = du_to_lv.unbind(0) if du_to_lv is not None else ()
    mf_t = mask_fac.unbind(0) if mask_fac is not None else ()
    mg_t = mask_gen.unbind(0) if mask_gen is not None else ()
    fac_w, u_wt, co_w, fac_in_wt = fac_wt.t(), w_u.t(), co_wt.t(), w_fac.t()
    d_gen, d_con, d_fac_carry = g_gen_t[-1], con.h.new_zeros(con.h.shape[1:]), None
    for t in reversed(range(steps)):
        if d_fac_carry is None:
            dfac_t[t].copy_(g_fac_t[t])
        elif mask_fac is not None:
            torch.addcmul(g_fac_t[t], d_fac_carry, mf_t[t + 1], out=dfac_t[t])
        else:
            torch.add(g_fac_t[t], d_fac_carry, out=dfac_t[t])
        d_gm = torch.mm(dfac_t[t], fac_w)
        d_gen = d_gen.addcmul(d_gm, mg_t[t]) if mask_gen is not None else d_gen + d_gm
        d_gen = gen.step_back(t, d_gen, g_gen_t[t - 1] if t > 0 else None)
        du = torch.addmm(g_u_t[t], gen.dx_t[t], u_wt)
        torch.add(g_mean_t[t], du, out=dm_t[t])
        if du_to_lv is not None:
            torch.addcmul(g_lv_t[t], du, du_to_lv_t[t], out=dlv_t[t])
        else:
            dlv_t[t].copy_(g_lv_t[t])
        d_con = torch.addmm(d_con, dout_t[t], co_w)
        d_con = con.step_back(t, d_con, None)
        d_fac_carry = torch.mm(con.dx_t[t], fac_in_wt)
    if mask_fac is not None:
        d_fac_carry = d_fac_carry * mf_t[0]
    return con.dx(), gen.dx(), d_con, d_gen, d_fac_carry, dfac, dout


def decoder_scan(
    con_proj: Tensor,
    gen_base: Tensor,
    con_h0: Tensor,
    gen_h0: Tensor,
    fac0: Tensor,
    weights: tuple[Tensor, ...],
    noise: Tensor | None,
    mask_fac: Tensor | None,
    mask_gen: Tensor | None,
    clip: float,
    var_min: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the controller/generator loop; all sequences time-major [T, B, ...].

    weights = (W_f [F, 3C], con W_g, con W_c, W_o^T [C, 2 co], b_o, W_u [co, 3G], gen W_g,
    gen W_c, W_fac^T [G, F]). Returns (gen states, factors, co means, co variances, co samples).
    """
    return _DecoderScan.apply(
        con_proj,
        gen_base,
        con_h0,
        gen_h0,
        fac0,
        *weights,
        noise,
        mask_fac,
        mask_gen,
        clip,
        var_min,
        needs_grad(con_proj, gen_base, con_h0, gen_h0, fac0, *weights),
    )
