"""Fused sequence kernels for the LFADS fast path: autograd Functions with hand-written backward.

Two kernels, both exact re-statements of the reference equations in `gru.py` / `core.py`:

- `gru_scan`: G independent clipped GRUs of the same size over pre-projected inputs (the
  encoders: forward and backward directions, time-reversed inputs for the latter), batched with
  `bmm` so one Python loop serves every direction.
- `decoder_scan`: the controller + inferred-input + generator + factor loop.

Forward runs without autograd and stores, per bin, the gates, the candidate, r * h and the
pre-clip state. Backward walks dh back through time with a few ops per bin and then forms every
weight gradient as ONE matmul over all bins and trials. GRU step (TensorFlow style), per bin:

    r, u = sigmoid(x_g + h W_g),  c = tanh(x_c + (r * h) W_c),
    n = u * h + (1 - u) * c,      h' = clip(n, -k, k)

Backward of one step, given dh' (the gradient w.r.t. the clipped state h'):

    dn   = dh' * [ -k <= n <= k ]            (clamp passes the boundary, like torch.clamp)
    dx_c = dn * (1 - u) * (1 - c^2)          (gradient of the candidate pre-activation)
    dx_u = dn * (h - c) * u * (1 - u)
    d(rh) = dx_c W_c^T,   dx_r = d(rh) * h * r * (1 - r)
    dh   = dn * u + d(rh) * r + [dx_r, dx_u] W_g^T
    dW_g = sum_t h_{t-1}^T [dx_r, dx_u]_t,   dW_c = sum_t (r * h)_{t-1}^T dx_c,t
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable


class _GruTape:
    """Per-bin buffers of one (possibly G-batched) clipped-GRU recurrence.

    Buffers are laid out [*lead, T, B, ...] (lead = (G,) for batched encoders, () otherwise), so
    that [*lead, T * B, ...] is a free reshape for the all-bins weight-gradient matmuls.
    """

    def __init__(self, h0: Tensor, steps: int) -> None:
        lead, (batch, hid) = h0.shape[:-2], h0.shape[-2:]
        self.tdim, self.hid, self.steps = len(lead), hid, steps
        self.addmm = torch.baddbmm if lead else torch.addmm
        self.mm = torch.bmm if lead else torch.mm

        def new(n: int, width: int) -> Tensor:
            return h0.new_empty(*lead, n, batch, width)

        self.h, self.gate, self.cand = new(steps + 1, hid), new(steps, 2 * hid), new(steps, hid)
        self.rh, self.pre = new(steps, hid), new(steps, hid)
        self.h.select(self.tdim, 0).copy_(h0)
        self.h_t, self.gate_t = self._bins(self.h), self._bins(self.gate)
        self.r_t, self.u_t = self._bins(self.gate[..., :hid]), self._bins(self.gate[..., hid:])
        self.cand_t, self.rh_t, self.pre_t = (
            self._bins(self.cand),
            self._bins(self.rh),
            self._bins(self.pre),
        )

    def _bins(self, buffer: Tensor) -> tuple[Tensor, ...]:
        """Per-bin views, made once (indexing inside the loops costs an op per bin)."""
        return buffer.unbind(self.tdim)

    def split_input(self, x: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Per-bin (gate, candidate) views of a projected input [*lead, T, B, 3H]."""
        n = self.hid
        return self._bins(x[..., : 2 * n]), self._bins(x[..., 2 * n :])

    def states(self) -> Tensor:
        return self.h.narrow(self.tdim, 1, self.steps)

    def step(self, t: int, xg: Tensor, xc: Tensor, wg: Tensor, wc: Tensor, clip: float) -> Tensor:
        """One forward bin from the projected input (gate part, candidate part)."""
        h = self.h_t[t]
        torch.sigmoid(self.addmm(xg, h, wg), out=self.gate_t[t])
        torch.mul(self.r_t[t], h, out=self.rh_t[t])
        # tanh(z) = 2 sigmoid(2 z) - 1: torch's CPU tanh is ~10x slower than its sigmoid.
        cand = torch.sigmoid(self.addmm(xc, self.rh_t[t], wc, beta=2, alpha=2), out=self.cand_t[t])
        cand.mul_(2.0).sub_(1.0)
        torch.lerp(self.cand_t[t], h, self.u_t[t], out=self.pre_t[t])
        return torch.clamp(self.pre_t[t], -clip, clip, out=self.h_t[t + 1])

    def prepare_backward(self, clip: float, wg: Tensor, wc: Tensor) -> None:
        """Everything in the step backward that does not depend on dh, for all bins at once.

        Overwrites the forward buffers in place (no large allocations): the clamp's pass mask
        [-k <= n <= k] is folded into u (carry term) and into the two gate factors.
        """
        n = self.hid
        r, u, c = self.gate[..., :n], self.gate[..., n:], self.cand
        h_prev = self.h.narrow(self.tdim, 0, self.steps)
        passed = self.pre.abs_().le_(clip)  # 1.0 where the clamp passes the gradient
        one_minus_u = torch.rsub(u, 1.0)
        k_upd = torch.sub(h_prev, c).mul_(u).mul_(one_minus_u).mul_(passed)
        k_cand = c.mul_(c).neg_().add_(1.0).mul_(one_minus_u).mul_(passed)
        k_reset = torch.rsub(r, 1.0).mul_(r).mul_(h_prev)
        u.mul_(passed)
        self.k_cand_t, self.k_upd_t = self._bins(k_cand), self._bins(k_upd)
        self.k_reset_t = self._bins(k_reset)
        # Separate contiguous gradient buffers and transposed weights: batched matmuls on CPU
        # take a slow path for strided or transposed operands.
        if self.tdim:
            self.dxg = self.gate.new_empty(self.gate.shape)
            self.dxc = self.cand.new_empty(self.cand.shape)
        else:  # 2-D matmuls are fine with row strides: one [T, B, 3H] buffer, no cat
            self.dx_joint = self.gate.new_empty(*self.gate.shape[:-1], 3 * n)
            self.dxg, self.dxc = self.dx_joint[..., : 2 * n], self.dx_joint[..., 2 * n :]
            self.dx_t = self._bins(self.dx_joint)
        self.dxg_t, self.dxc_t = self._bins(self.dxg), self._bins(self.dxc)
        self.dxr_t, self.dxu_t = self._bins(self.dxg[..., :n]), self._bins(self.dxg[..., n:])
        self.wg_t = wg.transpose(-1, -2).contiguous()
        self.wc_t = wc.transpose(-1, -2).contiguous()

    def dx(self) -> Tensor:
        """Gradient of the projected input [*lead, T, B, 3H]."""
        return torch.cat([self.dxg, self.dxc], -1) if self.tdim else self.dx_joint

    def step_back(self, t: int, dh: Tensor, extra: Tensor | None) -> Tensor:
        """dh (w.r.t. h_t) -> dh w.r.t. h_{t-1} (plus `extra`); writes dx_t = d(x proj)_t."""
        dxc = torch.mul(dh, self.k_cand_t[t], out=self.dxc_t[t])
        torch.mul(dh, self.k_upd_t[t], out=self.dxu_t[t])
        drh = self.mm(dxc, self.wc_t)
        torch.mul(drh, self.k_reset_t[t], out=self.dxr_t[t])
        carry = dh * self.u_t[t] if extra is None else torch.addcmul(extra, dh, self.u_t[t])
        carry.addcmul_(drh, self.r_t[t])
        return self.addmm(carry, self.dxg_t[t], self.wg_t)

    def weight_grads(self) -> tuple[Tensor, Tensor]:
        """(dW_g, dW_c), each one matmul over all T * B rows (per group: 2-D matmuls take
        transposed operands without a copy)."""
        split = self.tdim
        rows = self.steps * self.h.shape[split + 1]
        h_prev = self.h.narrow(split, 0, self.steps)

        def outer(left: Tensor, right: Tensor) -> Tensor:
            left = left.reshape(-1, rows, left.shape[-1])
            right = right.reshape(-1, rows, right.shape[-1])
            out = torch.stack([torch.mm(a.t(), b) for a, b in zip(left, right, strict=True)])
            return out if split else out[0]

        return outer(h_prev, self.dxg), outer(self.rh, self.dxc)


class _GruScan(Function):
    @staticmethod
    def forward(ctx: Any, x_proj: Tensor, h0: Tensor, wg: Tensor, wc: Tensor, clip: float):
        tape = _GruTape(h0, x_proj.shape[-3])
        xg, xc = tape.split_input(x_proj)
        for t in range(tape.steps):
            tape.step(t, xg[t], xc[t], wg, wc, clip)
        ctx.tape, ctx.clip = tape, clip
        ctx.save_for_backward(wg, wc)
        return tape.states()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_states: Tensor):
        tape, (wg, wc) = ctx.tape, ctx.saved_tensors
        tape.prepare_backward(ctx.clip, wg, wc)
        g = g_states.unbind(-3)
        dh = g[-1]
        for t in reversed(range(tape.steps)):
            dh = tape.step_back(t, dh, g[t - 1] if t > 0 else None)
        dwg, dwc = tape.weight_grads()
        del ctx.tape
        return tape.dx(), dh, dwg, dwc, None


def gru_scan(x_proj: Tensor, h0: Tensor, wg: Tensor, wc: Tensor, clip: float) -> Tensor:
    """Clipped-GRU states over projected inputs.

    x_proj [G, T, B, 3H] (biases included), h0 [G, B, H], wg [G, H, 2H], wc [G, H, H]
    -> states [G, T, B, H] (the state after each bin).
    """
    return _GruScan.apply(x_proj, h0, wg, wc, clip)


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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        steps, batch = con_proj.shape[:2]
        co, n_fac = co_b.shape[0] // 2, fac0.shape[-1]
        con, gen = _GruTape(con_h0, steps), _GruTape(gen_h0, steps)
        fac = fac0.new_empty(steps + 1, batch, n_fac)
        fac[0] = fac0
        a = fac0.new_empty(steps, batch, n_fac) if mask_fac is not None else fac[:steps]
        gm = gen_h0.new_empty(steps, batch, gen.hid) if mask_gen is not None else gen.states()
        out = co_b.new_empty(steps, batch, 2 * co)
        var = co_b.new_empty(steps, batch, co)
        std = torch.empty_like(var) if noise is not None else None
        u = torch.empty_like(var) if noise is not None else out[..., :co]
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
        w_fac, con_wg, con_wc, co_wt, w_u, gen_wg, gen_wc, fac_wt = ctx.saved_tensors
        a, gm, out, std, u, noise, mask_fac, mask_gen = ctx.buffers
        co, steps = g_mean.shape[-1], g_mean.shape[0]
        con.prepare_backward(ctx.clip, con_wg, con_wc)
        gen.prepare_backward(ctx.clip, gen_wg, gen_wc)
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
        con_dwg, con_dwc = con.weight_grads()
        gen_dwg, gen_dwc = gen.weight_grads()
        del ctx.tapes, ctx.buffers

        def outer(left: Tensor, right: Tensor) -> Tensor:  # sum over all bins and trials
            return left.reshape(-1, left.shape[-1]).t() @ right.reshape(-1, right.shape[-1])

        return (
            con.dx(), gen.dx(), d_con, d_gen, d_fac_carry,
            outer(a, con.dx()), con_dwg, con_dwc,
            outer(con.states(), dout), dout.sum((0, 1)), outer(u, gen.dx()), gen_dwg, gen_dwc,
            outer(gm, dfac),
            None, None, None, None, None,
        )  # fmt: skip


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
        con_proj, gen_base, con_h0, gen_h0, fac0, *weights, noise, mask_fac, mask_gen, clip, var_min
    )
