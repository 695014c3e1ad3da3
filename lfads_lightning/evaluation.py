"""Metrics of posterior-sampled outputs against the data they came from.

Split by split: bits per spike on held-in neurons, co-bps (held-out neurons, observed window),
fp-bps (forward bins), rate R2 against ground truth, and velocity R2 (ridge fit on train,
scored on valid) when behaviour exists.
"""

from __future__ import annotations

import numpy as np

from . import metrics
from .h5data import SessionData


def posterior_metrics(
    session: SessionData, outputs: dict[str, dict[str, np.ndarray]], recon: str = "poisson"
) -> dict[str, float]:
    t_enc, c_enc = session.encod_seq_len, session.encod_dim
    result: dict[str, float] = {}
    for split, out in outputs.items():
        data = session.splits[split]
        rates = out["rates"]
        if data.truth is not None:
            result[f"{split}_rate_r2"] = metrics.rate_r2(data.truth, rates)
        spikes = data.recon_data
        if spikes is None or recon != "poisson":
            continue
        result[f"{split}_bps"] = metrics.bits_per_spike(
            rates[:, :t_enc, :c_enc], spikes[:, :t_enc, :c_enc]
        )
        if spikes.shape[2] > c_enc:
            result[f"{split}_co_bps"] = metrics.co_bps(
                rates[:, :t_enc, c_enc:], spikes[:, :t_enc, c_enc:]
            )
        forward = spikes[:, t_enc:]
        if forward.shape[1] > 0 and not np.isnan(forward).all():
            result[f"{split}_fp_bps"] = metrics.fp_bps(rates[:, t_enc:], forward)
    train, valid = session.splits.get("train"), session.splits.get("valid")
    has_behavior = all(x is not None and x.behavior is not None for x in (train, valid))
    if has_behavior and "train" in outputs and "valid" in outputs:
        result["valid_vel_r2"] = metrics.velocity_r2(
            outputs["train"]["rates"][:, :t_enc],
            train.behavior,
            outputs["valid"]["rates"][:, :t_enc],
            valid.behavior,
            lag_bins=session.behavior_lag_bins,
        )
    return {k: float(v) for k, v in result.items() if v is not None and np.isfinite(v)}
