"""Spike jitter: every spike moved on its own, counts kept, input and target one trial."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lfads_lightning.config import ConfigError, load_config
from lfads_lightning.data.datamodule import Batch
from lfads_lightning.model.augment import jitter_counts, spike_jitter


def _offset_law(std: float) -> dict[int, float]:
    """P(offset = k) for round(N(0, std)) clamped to +-ceil(3 std), from the normal CDF."""
    width = math.ceil(3 * std)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / (std * math.sqrt(2))))

    law = {k: cdf(k + 0.5) - cdf(k - 0.5) for k in range(-width + 1, width)}
    law[width] = 1 - cdf(width - 0.5)
    law[-width] = cdf(-width + 0.5)
    return law


def test_a_lone_spike_moves_by_the_rounded_gaussian_law():
    counts = torch.zeros(20000, 41, 1)
    counts[:, 20, 0] = 1.0
    out = jitter_counts(counts, std=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sum(1), counts.sum(1))  # nothing lost or made
    offsets = out[:, :, 0].argmax(1).numpy() - 20
    for k, p in _offset_law(2.0).items():
        seen = float(np.mean(offsets == k))
        assert abs(seen - p) < 4 * math.sqrt(p * (1 - p) / 20000) + 1e-4, (k, seen, p)


def test_spikes_of_one_bin_move_independently_and_reflect_at_the_edges():
    counts = torch.zeros(4000, 8, 2)
    counts[:, 0, 0] = 3.0  # first bin: offsets below 0 reflect back inside
    counts[:, 7, 1] = 2.0  # last bin
    out = jitter_counts(counts, std=1.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.sum(1), counts.sum(1))
    assert (out >= 0).all() and torch.equal(out, out.round())
    spread = ((out[:, :, 0] > 0).sum(1) > 1).float().mean().item()
    assert spread > 0.5  # three spikes in one bin rarely all take one offset at std 1.5
    # reflection: a spike at bin 0 with offset -1 lands on bin 1, as often as offset +1
    p1 = _offset_law(1.5)[1]
    reached_bin1 = out[:, 1, 0].mean().item() / 3.0
    assert abs(reached_bin1 - 2 * p1) < 0.03


def _nlb_like_batch() -> Batch:
    gen = torch.Generator().manual_seed(2)
    recon = torch.poisson(torch.full((16, 12, 5), 0.4), generator=gen)
    recon[:, 10:, 3:] = float("nan")  # unknown held-out forward entries
    return Batch(
        encod_data=recon[:, :10, :3].clone(),
        recon_data=recon,
        ext_input=torch.zeros(16, 12, 0),
        sv_mask=torch.ones(16, 10, 3),
        truth=torch.zeros(16, 0, 0),
        session=torch.tensor(0),
        index=torch.arange(16),
    )


def test_input_stays_the_observed_block_of_the_jittered_target():
    batch = _nlb_like_batch()
    out = spike_jitter(batch, std=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.encod_data, out.recon_data[:, :10, :3])
    assert not torch.equal(out.recon_data[:, :10, :3], batch.recon_data[:, :10, :3])
    assert torch.equal(torch.isnan(out.recon_data), torch.isnan(batch.recon_data))
    known = ~torch.isnan(batch.recon_data[:, :, :3])
    assert torch.equal(
        out.recon_data[:, :, :3][known].sum(), batch.recon_data[:, :, :3][known].sum()
    )


def test_config_checks_the_jitter_option():
    with pytest.raises(ConfigError, match="spike_jitter_std must be >= 0"):
        load_config(None, ["model.spike_jitter_std=-1"])
    with pytest.raises(ConfigError, match="recon=poisson"):
        load_config(None, ["model.spike_jitter_std=1", "model.recon=gaussian"])
    with pytest.raises(ConfigError, match="sv_rate=0"):
        load_config(None, ["model.spike_jitter_std=1", "data.sv_rate=0.1"])
    assert load_config(None, ["model.spike_jitter_std=1.5"]).model.spike_jitter_std == 1.5
