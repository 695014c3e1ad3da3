"""Temporal-shift augmentation: every trial moved by one integer shift, input and target alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfads_lightning.config import ConfigError, load_config
from lfads_lightning.data.datamodule import Batch
from lfads_lightning.model.module import temporal_shift


def _batch(n: int = 64, t_enc: int = 10, t_rec: int = 14, c: int = 3) -> Batch:
    recon = torch.arange(n * t_rec * c, dtype=torch.float32).reshape(n, t_rec, c)
    return Batch(
        encod_data=recon[:, :t_enc, :2].clone(),
        recon_data=recon,
        ext_input=-recon[:, :, :1].clone(),
        sv_mask=torch.ones(n, t_enc, 2),
        truth=torch.zeros(n, 0, 0),
        session=torch.tensor(0),
        index=torch.arange(n),
    )


def test_each_trial_moves_by_one_bounded_integer_shift_with_edges_repeated():
    batch = _batch()
    out = temporal_shift(batch, std=3.0, max_shift=4, generator=torch.Generator().manual_seed(0))
    shifts = []
    for i in range(batch.recon_data.shape[0]):
        rec = batch.recon_data[i].numpy()
        # find the shift from the first bin that is not an edge copy
        found = [
            s
            for s in range(-4, 5)
            if np.array_equal(out.recon_data[i].numpy(), rec[np.clip(np.arange(14) - s, 0, 13)])
        ]
        assert len(found) == 1, f"trial {i} is not one clamped shift of itself"
        s = found[0]
        shifts.append(s)
        enc = batch.encod_data[i].numpy()
        np.testing.assert_array_equal(
            out.encod_data[i].numpy(), enc[np.clip(np.arange(10) - s, 0, 9)]
        )
        ext = batch.ext_input[i].numpy()
        np.testing.assert_array_equal(
            out.ext_input[i].numpy(), ext[np.clip(np.arange(14) - s, 0, 13)]
        )
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 4 and len(set(shifts)) > 3  # bounded, and really random
    torch.testing.assert_close(out.sv_mask, batch.sv_mask)  # masks are not moved


def test_config_checks_the_shift_options():
    with pytest.raises(ConfigError, match="temporal_shift"):
        load_config(None, ["model.temporal_shift_std=-1"])
    with pytest.raises(ConfigError, match="sample-validation"):
        load_config(None, ["model.temporal_shift_std=2", "data.sv_rate=0.1"])
    assert load_config(None, ["model.temporal_shift_std=2"]).model.temporal_shift_max == 6
