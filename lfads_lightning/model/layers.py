"""Small pieces of the network shared by both forward paths: the output record, the factor
readout and the controller's lagged view of the encoder states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LfadsOutput:
    params: Tensor  # [B, T_rec, C_rec, n_params] readout (e.g. log-rates)
    factors: Tensor  # [B, T_rec, fac_dim]
    gen_states: Tensor  # [B, T_rec, gen_dim]
    ic_mean: Tensor  # [B, ic_dim]
    ic_var: Tensor  # [B, ic_dim]
    ic_sample: Tensor  # [B, ic_dim]
    co_means: Tensor  # [B, T_rec, co_dim]
    co_vars: Tensor  # [B, T_rec, co_dim]
    co_samples: Tensor  # [B, T_rec, co_dim]


class NormalizedLinear(nn.Module):
    """Linear map without bias whose output rows have unit L2 norm (the factor readout).

    Normalising the rows stops the model from shrinking factors and inflating the readout,
    which keeps the factors on a comparable scale across runs.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, 0.0, in_features**-0.5)

    def normalized_weight(self) -> Tensor:
        return F.normalize(self.weight, p=2.0, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.normalized_weight().T


def lag_ci_states(fwd: Tensor, bwd: Tensor, lag: int) -> Tensor:
    """Delay the forward states and advance the backward states by `lag` bins.

    At bin t the controller then sees the data strictly before t (forward) and strictly after t
    (backward), never bin t itself, so it cannot copy the input it should explain.
    """
    if lag > 0:
        fwd = F.pad(fwd, (0, 0, lag, 0))[:, : fwd.shape[1]]
        bwd = F.pad(bwd, (0, 0, 0, lag))[:, lag:]
    return torch.cat([fwd, bwd], -1)
