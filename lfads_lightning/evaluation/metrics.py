"""Neural Latents Benchmark metrics (co-bps, fp-bps, vel R2, psth R2) and rate R2, in numpy.

Definitions follow the NLB'21 paper (Pei et al. 2021) and its reference implementation's
conventions. Where the benchmark relies on scikit-learn
(r2_score, Ridge, KFold, GridSearchCV) the same semantics are re-implemented here so that the
package needs neither scipy nor sklearn at runtime. Everything is computed in float64 whatever
the input dtype, so results do not depend on float32 summation order.

Tensors are trials x time x neurons; rates are in spikes per bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ZERO_RATE = 1e-9
DEFAULT_ALPHAS = np.logspace(-4, 0, 9)


# ---------------------------------------------------------------------------- Poisson metrics


def _lgamma(x: np.ndarray) -> np.ndarray:
    """Elementwise ln Gamma(x) via torch (avoids a scipy dependency)."""
    import torch  # torch is a runtime dependency anyway; imported lazily to keep import light

    return torch.lgamma(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def _as_pair(rates: np.ndarray, spikes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rates = np.asarray(rates, dtype=np.float64)
    spikes = np.asarray(spikes, dtype=np.float64)
    if rates.shape != spikes.shape:
        raise ValueError(f"rates shape {rates.shape} != spikes shape {spikes.shape}")
    return rates, spikes


def _nll_observed(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Poisson NLL of already-masked 1-D entries (spikes contain no NaN)."""
    if np.isnan(rates).any():
        raise ValueError("rates contain NaN where spikes are observed")
    if (rates < 0).any():
        raise ValueError("rates contain negative values")
    rates = np.where(rates == 0, ZERO_RATE, rates)
    return float(np.sum(rates - spikes * np.log(rates) + _lgamma(spikes + 1.0)))


def poisson_nll(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Summed Poisson negative log likelihood over the entries whose spike count is not NaN.

    NaN spike entries mark unobserved data (e.g. missing forward bins) and are skipped; a NaN
    or negative rate where a count is observed means a broken model, hence ValueError.
    """
    rates, spikes = _as_pair(rates, spikes)
    observed = ~np.isnan(spikes)
    return _nll_observed(rates[observed], spikes[observed])


def bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Improvement over a per-neuron constant-rate model, in bits per observed spike.

    The null rate of neuron j is the mean of its observed counts over all leading axes of the
    evaluated tensor itself. Returns NaN when there are no observed spikes (undefined).
    """
    rates, spikes = _as_pair(rates, spikes)
    if spikes.ndim < 1:
        raise ValueError("spikes must have a trailing neuron axis")
    observed = ~np.isnan(spikes)
    counts = np.where(observed, spikes, 0.0)
    lead = tuple(range(spikes.ndim - 1))
    n_obs = observed.sum(axis=lead)
    # Neurons without any observed entry get 0; they contribute nothing to either NLL.
    null_per_neuron = counts.sum(axis=lead) / np.maximum(n_obs, 1)
    null = np.broadcast_to(null_per_neuron, spikes.shape)
    total = float(counts.sum())
    if total <= 0:
        return float("nan")
    nll_model = _nll_observed(rates[observed], spikes[observed])
    nll_null = _nll_observed(null[observed], spikes[observed])
    return (nll_null - nll_model) / total / math.log(2)


def co_bps(heldout_rates: np.ndarray, heldout_spikes: np.ndarray) -> float:
    """Co-smoothing bps: predicted vs actual held-out neurons over the observed window."""
    return bits_per_spike(heldout_rates, heldout_spikes)


def fp_bps(forward_rates: np.ndarray, forward_spikes: np.ndarray) -> float:
    """Forward-prediction bps: all neurons (held-in and held-out) over the forward bins."""
    return bits_per_spike(forward_rates, forward_spikes)


# ---------------------------------------------------------------------------- R2 and ridge


def _as_2d(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y.reshape(-1, 1) if y.ndim == 1 else y


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination per output column, averaged uniformly (sklearn semantics).

    A constant target column scores 1.0 if predicted exactly and 0.0 otherwise, as sklearn's
    `force_finite=True` does, so one silent neuron cannot turn the average into NaN/-inf.
    """
    y_true, y_pred = _as_2d(y_true), _as_2d(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"r2_score needs equal 2-D shapes, got {y_true.shape}, {y_pred.shape}")
    if y_true.shape[0] < 2:
        return float("nan")
    ss_res = np.sum((y_true - y_pred) ** 2, axis=0)
    ss_tot = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    nonzero = ss_tot != 0
    scores = np.where(ss_res == 0, 1.0, 0.0)
    scores[nonzero] = 1.0 - ss_res[nonzero] / ss_tot[nonzero]
    return float(np.mean(scores))


def rate_r2(true_rates: np.ndarray, pred_rates: np.ndarray) -> float:
    """R2 of inferred against ground-truth rates, per neuron over all trials x time bins."""
    true_rates = np.asarray(true_rates, dtype=np.float64)
    pred_rates = np.asarray(pred_rates, dtype=np.float64)
    if true_rates.shape != pred_rates.shape:
        raise ValueError(f"shapes differ: {true_rates.shape} vs {pred_rates.shape}")
    n = true_rates.shape[-1]
    return r2_score(true_rates.reshape(-1, n), pred_rates.reshape(-1, n))


def _ridge_from_centred(
    xc: np.ndarray,
    yc: np.ndarray,
    alpha: float,
    gram: np.ndarray | None = None,
    xty: np.ndarray | None = None,
) -> np.ndarray:
    """Solve min ||yc - xc B||^2 + alpha ||B||^2 for centred data (primal or dual form)."""
    n, p = xc.shape
    try:
        if p <= n:
            g = xc.T @ xc if gram is None else gram
            rhs = xc.T @ yc if xty is None else xty
            return np.linalg.solve(g + alpha * np.eye(p), rhs)
        k = xc @ xc.T
        return xc.T @ np.linalg.solve(k + alpha * np.eye(n), yc)
    except np.linalg.LinAlgError:
        # Singular at alpha == 0: fall back to the minimum-norm least-squares solution.
        return np.linalg.lstsq(xc, yc, rcond=None)[0]


def fit_ridge(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept (X and Y centred), like sklearn's Ridge.

    Returns `coef` (features x outputs) and `intercept` (outputs); predict with
    `X @ coef + intercept`. A 1-D Y gives a 1-D coef and a scalar-shaped intercept.
    """
    X = _as_2d(X)
    y = np.asarray(Y, dtype=np.float64)
    Y2 = _as_2d(y)
    if X.shape[0] != Y2.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y2.shape[0]}")
    x_mean, y_mean = X.mean(axis=0), Y2.mean(axis=0)
    coef = _ridge_from_centred(X - x_mean, Y2 - y_mean, float(alpha))
    intercept = y_mean - x_mean @ coef
    if y.ndim == 1:
        return coef[:, 0], intercept[0]
    return coef, intercept


def kfold_indices(n: int, n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous (train, test) index folds without shuffling; the first n % k folds get one
    extra sample (the fold sizes of sklearn's KFold(shuffle=False))."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"need 2 <= n_folds <= n_samples, got n_folds={n_folds}, n={n}")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n)
    return [
        (np.concatenate([idx[:lo], idx[hi:]]), idx[lo:hi])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def ridge_cv_alpha(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
) -> float:
    """The alpha with the best mean held-out R2 over contiguous K folds (first one on ties),
    i.e. what GridSearchCV(Ridge(), cv=5) selects for the NLB velocity decoder."""
    X, Y = _as_2d(X), _as_2d(Y)
    alphas = [float(a) for a in np.atleast_1d(alphas)]
    if not alphas:
        raise ValueError("alphas is empty")
    scores = np.zeros((len(alphas), n_folds))
    for f, (tr, te) in enumerate(kfold_indices(X.shape[0], n_folds)):
        x_mean, y_mean = X[tr].mean(axis=0), Y[tr].mean(axis=0)
        xc, yc = X[tr] - x_mean, Y[tr] - y_mean
        primal = xc.shape[1] <= xc.shape[0]
        gram, xty = (xc.T @ xc, xc.T @ yc) if primal else (None, None)
        for a, alpha in enumerate(alphas):
            coef = _ridge_from_centred(xc, yc, alpha, gram, xty)
            pred = X[te] @ coef + (y_mean - x_mean @ coef)
            scores[a, f] = r2_score(Y[te], pred)
    return alphas[int(np.argmax(scores.mean(axis=1)))]


def _lagged_rows(
    rates: np.ndarray, vel: np.ndarray, lag_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pair rates at bin t with velocity at bin t + lag, flatten, drop rows with NaN velocity."""
    rates = np.asarray(rates, dtype=np.float64)
    vel = np.asarray(vel, dtype=np.float64)
    if rates.ndim != 3 or vel.ndim != 3 or rates.shape[0] != vel.shape[0]:
        raise ValueError(f"need trials x time x dim arrays, got {rates.shape} and {vel.shape}")
    if lag_bins < 0:
        raise ValueError(f"lag_bins must be >= 0, got {lag_bins}")
    n = min(rates.shape[1], vel.shape[1] - lag_bins)
    if n <= 0:
        raise ValueError(f"lag of {lag_bins} bins leaves no time bins")
    x = rates[:, :n].reshape(-1, rates.shape[2])
    y = vel[:, lag_bins : lag_bins + n].reshape(-1, vel.shape[2])
    keep = ~np.isnan(y).any(axis=1)
    x, y = x[keep], y[keep]
    if np.isnan(x).any():
        raise ValueError("rates contain NaN where behaviour is observed")
    return x, y


def velocity_r2(
    train_rates: np.ndarray,
    train_vel: np.ndarray,
    eval_rates: np.ndarray,
    eval_vel: np.ndarray,
    lag_bins: int = 0,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
) -> float:
    """Velocity decoding R2: ridge from rates to (lagged) velocity, alpha by CV on train rows.

    Rates at bin t predict velocity at bin t + lag_bins; with equal time lengths this uses
    rates[:, :T - lag] and vel[:, lag:]. If velocity has more bins than rates, the extra bins
    are used as lag targets.
    """
    x_tr, y_tr = _lagged_rows(train_rates, train_vel, lag_bins)
    x_ev, y_ev = _lagged_rows(eval_rates, eval_vel, lag_bins)
    alpha = ridge_cv_alpha(x_tr, y_tr, alphas, n_folds)
    coef, intercept = fit_ridge(x_tr, y_tr, alpha)
    return r2_score(y_ev, x_ev @ coef + intercept)


# ---------------------------------------------------------------------------- PSTHs


def gaussian_kernel(sd_bins: float) -> np.ndarray:
    """Gaussian sampled at integer bin offsets within +-ceil(4 sd), normalised to sum 1."""
    radius = max(1, math.ceil(4 * sd_bins))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sd_bins) ** 2)
    return kernel / kernel.sum()


def smooth_spikes(spikes: np.ndarray, sd_bins: float, edges: str = "renormalize") -> np.ndarray:
    """Gaussian-smooth counts along the time axis (axis 1 of trials x time x neurons).

    Edge handling, `edges="renormalize"` (default): near trial edges and around NaN entries
    the kernel is truncated to the observed bins and renormalised to sum 1, so a constant
    signal stays constant up to the edges instead of sagging (missing data are not zeros).
    `edges="zero"`: zero padding, like np.convolve(..., mode="same"); NaNs count as 0.
    Bins with no observed entry under the kernel are NaN. sd_bins == 0 returns a copy.
    """
    x = np.asarray(spikes, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"spikes must be trials x time x neurons, got shape {x.shape}")
    if edges not in ("renormalize", "zero"):
        raise ValueError(f"edges must be 'renormalize' or 'zero', got {edges!r}")
    if sd_bins < 0:
        raise ValueError(f"sd_bins must be >= 0, got {sd_bins}")
    if sd_bins == 0:
        return x.copy()
    kernel = gaussian_kernel(sd_bins)
    radius = len(kernel) // 2
    n_time = x.shape[1]
    # Banded T x T matrix of kernel weights: out[t] = sum_s K[t, s] x[s] is the convolution.
    lag = np.arange(n_time)[:, None] - np.arange(n_time)[None, :]
    band = np.abs(lag) <= radius
    K = np.where(band, kernel[np.clip(lag + radius, 0, 2 * radius)], 0.0)
    observed = ~np.isnan(x)
    values = np.where(observed, x, 0.0)
    smoothed = np.einsum("ts,bsn->btn", K, values)
    if edges == "zero":
        return smoothed
    weight = np.einsum("ts,bsn->btn", K, observed.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, smoothed / weight, np.nan)


def true_psths(
    spikes: np.ndarray, cond_idx: np.ndarray, smooth_sd_bins: float, edges: str = "renormalize"
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed spikes averaged over the trials of each condition.

    Returns `(conditions, psth)`: the sorted unique condition ids and a
    conditions x time x neurons array in that order. NaN entries are ignored in the mean.
    """
    cond_idx = np.asarray(cond_idx).reshape(-1)
    smoothed = smooth_spikes(spikes, smooth_sd_bins, edges=edges)
    if smoothed.shape[0] != cond_idx.shape[0]:
        raise ValueError(f"{smoothed.shape[0]} trials but {cond_idx.shape[0]} condition ids")
    conditions = np.unique(cond_idx)
    psth = np.stack([_nanmean0(smoothed[cond_idx == c]) for c in conditions])
    return conditions, psth


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN, NaN (without a warning) where nothing is observed."""
    observed = ~np.isnan(x)
    count = observed.sum(axis=0)
    total = np.where(observed, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def psth_r2(
    eval_rates: np.ndarray,
    cond_idx_eval: np.ndarray,
    true_psth: np.ndarray,
    conditions: Sequence[int] | np.ndarray,
) -> float:
    """PSTH R2: per condition the mean predicted rates over its eval trials vs the true PSTH,
    conditions x time stacked as rows, R2 per neuron averaged uniformly.

    `true_psth[i]` belongs to `conditions[i]`. Conditions without any eval trial are skipped
    (their predicted PSTH is undefined).
    """
    rates = np.asarray(eval_rates, dtype=np.float64)
    true_psth = np.asarray(true_psth, dtype=np.float64)
    cond_idx_eval = np.asarray(cond_idx_eval).reshape(-1)
    conditions = np.asarray(conditions).reshape(-1)
    if rates.shape[0] != cond_idx_eval.shape[0]:
        raise ValueError(f"{rates.shape[0]} trials but {cond_idx_eval.shape[0]} condition ids")
    if true_psth.shape != (len(conditions), *rates.shape[1:]):
        raise ValueError(
            f"true_psth shape {true_psth.shape} != (conditions, time, neurons) "
            f"{(len(conditions), *rates.shape[1:])}"
        )
    true_rows, pred_rows = [], []
    for c, psth in zip(conditions, true_psth, strict=True):
        mask = cond_idx_eval == c
        if mask.any():
            true_rows.append(psth)
            pred_rows.append(rates[mask].mean(axis=0))
    if not true_rows:
        raise ValueError("no eval trial belongs to any of the given conditions")
    n = rates.shape[2]
    return r2_score(
        np.concatenate(true_rows).reshape(-1, n), np.concatenate(pred_rows).reshape(-1, n)
    )
