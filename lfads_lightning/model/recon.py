"""Reconstruction distributions: how readout outputs become a likelihood of the observed data.

Each distribution reads `n_params` numbers per neuron and bin from the readout and gives an
elementwise negative log-likelihood (the training loss) and the mean (the inferred "rates").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lfads_lightning.model import native

LOG_2PI = math.log(2.0 * math.pi)


class Reconstruction:
    name: str = ""
    n_params: int = 1

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        """params [..., C, n_params], data [..., C] -> NLL [..., C]."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def init_bias(self, data_mean: Tensor) -> Tensor:
        """Readout bias [C, n_params] that starts the model at the data's mean (faster start)."""
        bias = torch.zeros(data_mean.shape[-1], self.n_params)
        bias[:, 0] = data_mean
        return bias


class Poisson(Reconstruction):
    """params = log-rate; NLL = r - n log r + lgamma(n + 1)."""

    name, n_params = "poisson", 1

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        log_rate = params[..., 0]
        return torch.exp(log_rate) - data * log_rate + native.log_factorial(data)

    def mean(self, params: Tensor) -> Tensor:
        return torch.exp(params[..., 0])

    def init_bias(self, data_mean: Tensor) -> Tensor:
        return torch.log(data_mean.clamp_min(1e-3)).unsqueeze(-1)


class Gaussian(Reconstruction):
    """params = (mean, log-variance)."""

    name, n_params = "gaussian", 2

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        mean, logvar = params[..., 0], params[..., 1]
        return 0.5 * (LOG_2PI + logvar + (data - mean) ** 2 * torch.exp(-logvar))

    def mean(self, params: Tensor) -> Tensor:
        return params[..., 0]


class Gamma(Reconstruction):
    """params = (log concentration, log rate); data must be > 0 (clamped to a small floor)."""

    name, n_params = "gamma", 2
    floor = 1e-6

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        conc, rate = torch.exp(params[..., 0]), torch.exp(params[..., 1])
        x = data.clamp_min(self.floor)
        log_p = conc * torch.log(rate) + (conc - 1.0) * torch.log(x) - rate * x - torch.lgamma(conc)
        return -log_p

    def mean(self, params: Tensor) -> Tensor:
        return torch.exp(params[..., 0] - params[..., 1])

    def init_bias(self, data_mean: Tensor) -> Tensor:
        # concentration 1 (exponential), rate 1 / mean.
        return torch.stack([torch.zeros_like(data_mean), -torch.log(data_mean.clamp_min(1e-3))], -1)


class ZeroInflatedGamma(Reconstruction):
    """Calcium-style events: zero with probability 1 - q, else min_value + Gamma(conc, rate).

    params = (log concentration, log rate, logit q).
    """

    name, n_params = "zig", 3

    def __init__(self, min_value: float = 0.1) -> None:
        self.min_value = min_value

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        conc, rate = torch.exp(params[..., 0]), torch.exp(params[..., 1])
        logit_q = params[..., 2]
        is_event = data > 0
        x = (data - self.min_value).clamp_min(1e-6)
        log_gamma = (
            conc * torch.log(rate) + (conc - 1.0) * torch.log(x) - rate * x - torch.lgamma(conc)
        )
        log_event = F.logsigmoid(logit_q) + log_gamma
        log_zero = F.logsigmoid(-logit_q)
        return -torch.where(is_event, log_event, log_zero)

    def mean(self, params: Tensor) -> Tensor:
        q = torch.sigmoid(params[..., 2])
        return q * (self.min_value + torch.exp(params[..., 0] - params[..., 1]))

    def init_bias(self, data_mean: Tensor) -> Tensor:
        return torch.zeros(data_mean.shape[-1], self.n_params)


class MSE(Reconstruction):
    """Squared error against the readout; not a likelihood, but a common baseline."""

    name, n_params = "mse", 1

    def nll(self, params: Tensor, data: Tensor) -> Tensor:
        return (params[..., 0] - data) ** 2

    def mean(self, params: Tensor) -> Tensor:
        return params[..., 0]


def make_reconstruction(name: str, zig_min_value: float = 0.1) -> Reconstruction:
    table = {"poisson": Poisson, "gaussian": Gaussian, "gamma": Gamma, "mse": MSE}
    if name == "zig":
        return ZeroInflatedGamma(zig_min_value)
    if name not in table:
        raise ValueError(
            f"unknown reconstruction {name!r}; valid: poisson, gaussian, gamma, zig, mse"
        )
    return table[name]()
