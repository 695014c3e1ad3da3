"""Metrics of posterior-sampled outputs against the data they came from.

Split by split: bits per spike on held-in neurons, co-bps (held-out neurons, observed window),
fp-bps (forward bins), rate R2 against ground truth, and velocity R2 (ridge fit on train,
scored on valid) when behaviour exists.
"""

from __future__ import annotations

import numpy as np

from lfads_lightning.data.format import SessionData
from lfads_lightning.evaluation import metrics


def rate_metrics(
    rates: np.ndarray,
    spikes: np.ndarray | None,
    truth: np.ndarray | None,
    t_enc: int,
    c_enc: int,
    poisson: bool = True,
) -> dict[str, float]:
    """bps (held-in, observed window), co-bps (held-out), fp-bps (forward bins) and rate R2.

    Bits per spike need spike counts (Poisson data); NaN entries of `spikes` are unknown.
    """
    result: dict[str, float] = {}
    if truth is not None:
        result["rate_r2"] = metrics.rate_r2(truth, rates)
    if spikes is None or not poisson:
        return result
    result["bps"] = metrics.bits_per_spike(rates[:, :t_enc, :c_enc], spikes[:, :t_enc, :c_enc])
    if spikes.shape[2] > c_enc:
        result["co_bps"] = metrics.co_bps(rates[:, :t_enc, c_enc:], spikes[:, :t_enc, c_enc:])
    forward = spikes[:, t_enc:]
    if forward.shape[1] > 0 and not np.isnan(forward).all():
        result["fp_bps"] = metrics.fp_bps(rates[:, t_enc:], forward)
    return result


def posterior_metrics(
    session: SessionData, outputs: dict[str, dict[str, np.ndarray]], recon: str = "poisson"
) -> dict[str, float]:
    t_enc, c_enc = session.encod_seq_len, session.encod_dim
    result: dict[str, float] = {}
    for split, out in outputs.items():
        data = session.splits[split]
        values = rate_metrics(
            out["rates"], data.recon_data, data.truth, t_enc, c_enc, recon == "poisson"
        )
        result.update({f"{split}_{name}": value for name, value in values.items()})
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
