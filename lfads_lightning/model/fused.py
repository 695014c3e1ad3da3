"""Fused sequence kernels for the LFADS fast path: autograd Functions with hand-written backward.

Two kernels, both exact re-statements of the reference equations in `gru.py` / `network.py`:

- `gru_scan` (here): G independent clipped GRUs of the same size over pre-projected inputs (the
  encoders: forward and backward directions, time-reversed inputs for the latter), batched so
  one loop serves every direction.
- `decoder_scan` (fused_decoder.py): the controller + inferred-input + generator + factor loop.

Each has two implementations of its loops over bins, computing the same numbers: native C++
(kernels.cpp, via native.py; used on CPU when it builds) and torch ops (the fallback, and the
path on CUDA).

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

from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from lfads_lightning.model import native


class _GruTape:
    """Per-bin buffers of one (possibly G-batched) clipped-GRU recurrence.

    Buffers are laid out [*lead, T, B, ...] (lead = (G,) for batched encoders, () otherwise), so
    that [*lead, T * B, ...] is a free reshape for the all-bins weight-gradient matmuls.
    """

    def __init__(self, h0: Tensor, steps: int, scratch: bool = False) -> None:
        """scratch: no backward will run (the native loops then keep gate, candidate, r * h and
        the pre-clip state for one bin only, reused by every bin; the states h stay whole)."""
        lead, (batch, hid) = h0.shape[:-2], h0.shape[-2:]
        self.tdim, self.hid, self.steps = len(lead), hid, steps
        self.addmm = torch.baddbmm if lead else torch.addmm
        self.mm = torch.bmm if lead else torch.mm

        def new(n: int, width: int) -> Tensor:
            return h0.new_empty(*lead, n, batch, width)

        bins = 1 if scratch else steps
        self.h, self.gate, self.cand = new(steps + 1, hid), new(bins, 2 * hid), new(bins, hid)
        self.rh, self.pre = new(bins, hid), new(bins, hid)
        self.h.select(self.tdim, 0).copy_(h0)

    # Per-bin views for the torch-op loops, made once on first use (the native loops need none).
    h_t = cached_property(lambda self: self._bins(self.h))
    gate_t = cached_property(lambda self: self._bins(self.gate))
    r_t = cached_property(lambda self: self._bins(self.gate[..., : self.hid]))
    u_t = cached_property(lambda self: self._bins(self.gate[..., self.hid :]))
    cand_t = cached_property(lambda self: self._bins(self.cand))
    rh_t = cached_property(lambda self: self._bins(self.rh))
    pre_t = cached_property(lambda self: self._bins(self.pre))

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

    def native_args(self) -> tuple[Tensor, ...]:
        return self.h, self.gate, self.cand, self.rh, self.pre

    def weight_grads(self, dxg: Tensor | None = None, dxc: Tensor | None = None):
        """(dW_g, dW_c), each one matmul over all T * B rows (per group: 2-D matmuls take
        transposed operands without a copy). dxg / dxc default to the Python loop's buffers."""
        split = self.tdim
        rows = self.steps * self.h.shape[split + 1]
        h_prev = self.h.narrow(split, 0, self.steps)

        def outer(left: Tensor, right: Tensor) -> Tensor:
            left = left.reshape(-1, rows, left.shape[-1])
            right = right.reshape(-1, rows, right.shape[-1])
            out = torch.stack([torch.mm(a.t(), b) for a, b in zip(left, right, strict=True)])
            return out if split else out[0]

        dxg = self.dxg if dxg is None else dxg
        dxc = self.dxc if dxc is None else dxc
        return outer(h_prev, dxg), outer(self.rh, dxc)


class _GruScan(Function):
    @staticmethod
    def forward(
        ctx: Any, x_proj: Tensor, h0: Tensor, wg: Tensor, wc: Tensor, clip: float, grad: bool
    ):
        ctx.native = native.usable(x_proj, h0, wg, wc)
        tape = _GruTape(h0, x_proj.shape[-3], scratch=ctx.native and not grad)
        if ctx.native:
            native.ops().gru_forward(x_proj, *tape.native_args(), wg, wc, clip)
        else:
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
        if ctx.native:
            del ctx.tape
            return (*_gru_backward_native(tape, g_states, wg, wc, ctx.clip), None, None)
        tape.prepare_backward(ctx.clip, wg, wc)
        g = g_states.unbind(-3)
        dh = g[-1]
        for t in reversed(range(tape.steps)):
            dh = tape.step_back(t, dh, g[t - 1] if t > 0 else None)
        dwg, dwc = tape.weight_grads()
        del ctx.tape
        return tape.dx(), dh, dwg, dwc, None, None


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether a backward can follow (else the forward keeps no tape)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _rows(x: Tensor) -> Tensor:
    """x with unit stride in its last dimension (what the native loops index by)."""
    return x if x.stride(-1) == 1 and x.dim() > 0 else x.contiguous()


def _gru_backward_native(
    tape: _GruTape, g_states: Tensor, wg: Tensor, wc: Tensor, clip: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dW_g, dW_c) with the native loop; the clamp mask and gate factors are formed
    inside it, per bin, from the forward tape (no `prepare_backward`)."""
    n = tape.hid
    dx = tape.gate.new_empty(*tape.gate.shape[:-1], 3 * n)
    wg_t = wg.transpose(-1, -2).contiguous()
    wc_t = wc.transpose(-1, -2).contiguous()
    dh0 = native.ops().gru_backward(_rows(g_states), *tape.native_args(), wg_t, wc_t, clip, dx)
    dwg, dwc = tape.weight_grads(dx[..., : 2 * n], dx[..., 2 * n :])
    return dx, dh0, dwg, dwc


def gru_scan(x_proj: Tensor, h0: Tensor, wg: Tensor, wc: Tensor, clip: float) -> Tensor:
    """Clipped-GRU states over projected inputs.

    x_proj [G, T, B, 3H] (biases included), h0 [G, B, H], wg [G, H, 2H], wc [G, H, H]
    -> states [G, T, B, H] (the state after each bin).
    """
    return _GruScan.apply(x_proj, h0, wg, wc, clip, needs_grad(x_proj, h0, wg, wc))
