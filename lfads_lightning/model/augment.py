"""Training-only augmentations of a batch: temporal shift and spike jitter (LFADS.md).

Both act on the batch before coordinated dropout, on the encoder input and the reconstruction
target together, so the model is asked to explain the augmented trial it was shown: more
distinct trials from the same few recordings, against overfitting small data sets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def temporal_shift(
    batch: Any, std: float, max_shift: int, generator: torch.Generator | None = None
) -> Any:
    """The batch with each trial moved in time by round(N(0, std)) bins, clamped to +-max_shift.

    Bin t takes bin t - s of the same trial (edges repeat the first/last bin), in the encoder
    data, the reconstruction target and the external inputs alike, so input and target stay
    aligned; the model sees the same dynamics at jittered onsets (an augmentation against
    overfitting few trials).
    """
    n = batch.encod_data.shape[0]
    device = batch.encod_data.device
    noise = torch.randn(n, generator=generator, device="cpu").to(device) * std
    shift = noise.round().clamp(-max_shift, max_shift).long()

    def moved(x: Tensor) -> Tensor:
        if x.shape[1] == 0:
            return x
        t = torch.arange(x.shape[1], device=device)
        idx = (t[None, :] - shift[:, None]).clamp(0, x.shape[1] - 1)
        return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))

    return batch._replace(
        encod_data=moved(batch.encod_data),
        recon_data=moved(batch.recon_data),
        ext_input=moved(batch.ext_input),
    )


def jitter_counts(counts: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Every spike of `counts` [B, T, C] moved on its own by round(N(0, std)) bins.

    Offsets are clamped to +-ceil(3 std) and reflected at the trial's edges, so no spike is lost
    and the total per trial and neuron is kept. Each spike draws its own offset (a bin with 3
    spikes spreads them independently); the work is per spike, not per entry, since spike
    counts are mostly zeros.
    """
    n_bins = counts.shape[1]
    width = max(1, math.ceil(3 * std))
    whole = counts.round().clamp(min=0)
    trial, bin_, neuron = torch.nonzero(whole, as_tuple=True)
    repeats = whole[trial, bin_, neuron].long()
    trial, bin_, neuron = (x.repeat_interleave(repeats) for x in (trial, bin_, neuron))
    noise = torch.randn(bin_.shape, generator=generator, device="cpu").to(counts.device)
    dest = bin_ + (noise * std).round().clamp(-width, width).long()
    period = 2 * (n_bins - 1)
    if period > 0:
        dest = dest.remainder(period)
        dest = torch.where(dest >= n_bins, period - dest, dest)
    else:
        dest = torch.zeros_like(dest)
    out = torch.zeros_like(counts)
    out.index_put_(
        (trial, dest, neuron), torch.ones_like(noise, dtype=counts.dtype), accumulate=True
    )
    return out


def spike_jitter(batch: Any, std: float, generator: torch.Generator | None = None) -> Any:
    """The batch with each spike of the target jittered in time (`jitter_counts`).

    Where the encoder input is the target's observed held-in block (every data layout this
    project writes), the input takes the same jittered spikes, so input and target stay one
    trial; otherwise the input is jittered on its own. NaN (unknown) entries stay NaN.
    """
    recon = batch.recon_data
    t_enc, c_enc = batch.encod_data.shape[1:]
    unknown = torch.isnan(recon)
    moved = jitter_counts(torch.nan_to_num(recon), std, generator)
    moved = torch.where(unknown, recon, moved)
    block = recon[:, :t_enc, :c_enc]
    if block.shape == batch.encod_data.shape and torch.equal(block, batch.encod_data):
        encod = moved[:, :t_enc, :c_enc].clone()
    else:
        encod = jitter_counts(batch.encod_data, std, generator)
    return batch._replace(encod_data=encod, recon_data=moved)
