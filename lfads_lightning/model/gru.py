"""TensorFlow-style GRU with a clipped hidden state, as LFADS uses it.

Unlike `torch.nn.GRU`, the reset gate multiplies the hidden state *before* the recurrent matmul
of the candidate, and the new state is clipped to +-cell_clip, which keeps the generator stable
over long unrolls. Input projections are split from the recurrent step so that callers can
project a whole sequence in one matmul and only run the recurrent part per time step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _normal_init(weight: Tensor, fan_in: int) -> None:
    if fan_in > 0 and weight.numel() > 0:
        nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in))


class ClippedGRUCell(nn.Module):
    """h' = clip(u * h + (1 - u) * tanh(W_c x + U_c (r * h) + b_c)); gates r, u = sigmoid(...)."""

    def __init__(self, input_size: int, hidden_size: int, clip_value: float = 5.0) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.clip_value = clip_value
        h = hidden_size
        # Column blocks: [reset | update | candidate].
        self.weight_ih = nn.Parameter(torch.empty(input_size, 3 * h))
        self.weight_hh_gates = nn.Parameter(torch.empty(h, 2 * h))
        self.weight_hh_cand = nn.Parameter(torch.empty(h, h))
        # Gate biases start at 1 (cells remember by default), the candidate's at 0.
        self.bias = nn.Parameter(torch.cat([torch.ones(2 * h), torch.zeros(h)]))
        _normal_init(self.weight_ih, input_size)
        _normal_init(self.weight_hh_gates, h)
        _normal_init(self.weight_hh_cand, h)

    def project_input(self, x: Tensor) -> Tensor:
        """x [..., input_size] -> [..., 3 * hidden]; includes the biases."""
        if self.input_size == 0:
            return self.bias.expand(*x.shape[:-1], 3 * self.hidden_size)
        return torch.addmm(self.bias, x.reshape(-1, self.input_size), self.weight_ih).reshape(
            *x.shape[:-1], 3 * self.hidden_size
        )

    def step(self, x_proj: Tensor, h: Tensor) -> Tensor:
        """One recurrent step from a pre-projected input."""
        n = self.hidden_size
        gates = torch.sigmoid(x_proj[..., : 2 * n] + h @ self.weight_hh_gates)
        reset, update = gates[..., :n], gates[..., n:]
        cand = torch.tanh(x_proj[..., 2 * n :] + (reset * h) @ self.weight_hh_cand)
        h_new = update * h + (1.0 - update) * cand
        return torch.clamp(h_new, -self.clip_value, self.clip_value)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.step(self.project_input(x), h)

    def recurrent_weights(self) -> list[Tensor]:
        return [self.weight_hh_gates, self.weight_hh_cand]


class BidirectionalClippedGRU(nn.Module):
    """Forward and backward clipped GRUs over a sequence, with learnable initial states."""

    def __init__(self, input_size: int, hidden_size: int, clip_value: float = 5.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.fwd = ClippedGRUCell(input_size, hidden_size, clip_value)
        self.bwd = ClippedGRUCell(input_size, hidden_size, clip_value)
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, D] -> (fwd states [B, T, H], bwd states [B, T, H]).

        fwd[:, t] has seen x[:, :t+1]; bwd[:, t] has seen x[:, t:]. So fwd[:, -1] and bwd[:, 0]
        are the final states that summarise the whole trial.
        """
        batch, steps, _ = x.shape
        # unbind, not proj[:, t]: indexing in the loop makes autograd build a full-size
        # gradient per step (quadratic in T); unbind's backward stacks the pieces once.
        proj_f = self.fwd.project_input(x).unbind(1)
        proj_b = self.bwd.project_input(x).unbind(1)
        h_f = self.h0[0].expand(batch, -1)
        h_b = self.h0[1].expand(batch, -1)
        out_f, out_b = [], []
        for t in range(steps):
            h_f = self.fwd.step(proj_f[t], h_f)
            h_b = self.bwd.step(proj_b[steps - 1 - t], h_b)
            out_f.append(h_f)
            out_b.append(h_b)
        return torch.stack(out_f, 1), torch.stack(out_b[::-1], 1)

    def recurrent_weights(self) -> list[Tensor]:
        return self.fwd.recurrent_weights() + self.bwd.recurrent_weights()
