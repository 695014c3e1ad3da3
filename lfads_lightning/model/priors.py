"""Priors over the initial condition (Gaussian) and the inferred inputs (AR(1)), and their KLs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Elementwise log N(x; mean, var)."""
    return -0.5 * (LOG_2PI + torch.log(var) + (x - mean) ** 2 / var)


def diagonal_gaussian_kl(
    post_mean: Tensor, post_var: Tensor, prior_mean: Tensor, prior_var: Tensor
) -> Tensor:
    """KL(q || p) for diagonal Gaussians, summed over the last dim -> one value per trial."""
    kl = 0.5 * (
        torch.log(prior_var)
        - torch.log(post_var)
        + (post_var + (post_mean - prior_mean) ** 2) / prior_var
        - 1.0
    )
    return kl.sum(-1)


class GaussianICPrior(nn.Module):
    """Learnable mean (starts at 0), fixed variance."""

    def __init__(self, dim: int, variance: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.register_buffer("variance", torch.full((dim,), float(variance)))

    def kl(self, post_mean: Tensor, post_var: Tensor) -> Tensor:
        return diagonal_gaussian_kl(post_mean, post_var, self.mean, self.variance)


class AutoregressivePrior(nn.Module):
    """AR(1) per dimension: u_0 ~ N(0, nvar / (1 - a^2)), u_t | u_{t-1} ~ N(a u_{t-1}, nvar), a = exp(-1/tau).

    tau and nvar are learnt in log space so they stay positive.
    """

    def __init__(self, dim: int, tau: float, noise_variance: float) -> None:
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.log_nvar = nn.Parameter(torch.full((dim,), math.log(noise_variance)))

    def log_prob(self, u: Tensor) -> Tensor:
        """u [B, T, D] -> log p(u) per trial [B]."""
        alpha = torch.exp(-1.0 / torch.exp(self.log_tau))
        nvar = torch.exp(self.log_nvar)
        stationary_var = nvar / (1.0 - alpha**2)
        first = gaussian_log_density(u[:, 0], torch.zeros_like(u[:, 0]), stationary_var)
        rest = gaussian_log_density(u[:, 1:], alpha * u[:, :-1], nvar)
        return first.sum(-1) + rest.sum((-1, -2))

    def kl(self, u: Tensor, post_mean: Tensor, post_var: Tensor) -> Tensor:
        """Single-sample estimate log q(u) - log p(u), per trial [B]."""
        log_q = gaussian_log_density(u, post_mean, post_var).sum((-1, -2))
        return log_q - self.log_prob(u)
