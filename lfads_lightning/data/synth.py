"""Synthetic spiking data with known firing rates, to check that a fit recovers the truth.

Both generators return `{"splits": ..., "attrs": ...}` ready for `write_session`; everything is
drawn from `np.random.default_rng(seed)`, so a seed and the parameters fully determine a file.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lfads_lightning.data.format import write_session
from lfads_lightning.errors import DataError


def _lorenz_deriv(x: np.ndarray, sigma: float, rho: float, beta: float) -> np.ndarray:
    dx = sigma * (x[:, 1] - x[:, 0])
    dy = x[:, 0] * (rho - x[:, 2]) - x[:, 1]
    dz = x[:, 0] * x[:, 1] - beta * x[:, 2]
    return np.stack([dx, dy, dz], axis=1)


def _rk4(x: np.ndarray, dt: float, deriv: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    k1 = deriv(x)
    k2 = deriv(x + 0.5 * dt * k1)
    k3 = deriv(x + 0.5 * dt * k2)
    k4 = deriv(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def _split_trials(
    rates: np.ndarray,
    cond: np.ndarray,
    rng: np.random.Generator,
    n_obs_steps: int,
    n_heldin: int,
    valid_every: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Poisson spikes from per-trial rates; valid = every `valid_every`-th trial."""
    spikes = rng.poisson(rates).astype(np.float32)
    trial = np.arange(rates.shape[0])
    is_valid = trial % valid_every == 0
    splits = {}
    for name, sel in (("train", ~is_valid), ("valid", is_valid)):
        splits[name] = {
            "encod_data": spikes[sel, :n_obs_steps, :n_heldin],
            "recon_data": spikes[sel],
            "truth": rates[sel].astype(np.float32),
            "cond_idx": cond[sel].astype(np.int64),
            "inds": trial[sel].astype(np.int64),
        }
    return splits


def _readout_scale(logits: np.ndarray, std: float, max_log_ratio: float) -> np.ndarray:
    """Per-neuron gain giving log-rate std `std`, lowered where the peak/mean rate ratio would
    exceed exp(`max_log_ratio`): Lorenz latents are skewed, so exp() of them has long tails."""

    def log_peak_over_mean(gain: np.ndarray) -> np.ndarray:
        x = logits * gain
        return -np.log(np.exp(x - x.max(axis=0)).mean(axis=0))

    full = std / logits.std(axis=0)
    lo, hi = np.zeros_like(full), full.copy()
    for _ in range(40):  # the ratio grows monotonically with the gain: bisect
        mid = 0.5 * (lo + hi)
        good = log_peak_over_mean(mid) <= max_log_ratio
        lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
    return np.where(log_peak_over_mean(full) <= max_log_ratio, full, lo)


def _check_common(n_neurons: int, n_heldout: int, n_forward: int, valid_every: int) -> None:
    if not 0 <= n_heldout < n_neurons:
        raise DataError(f"n_heldout={n_heldout} must be in [0, n_neurons={n_neurons}); lower it")
    if n_forward < 0:
        raise DataError(f"n_forward={n_forward} must be >= 0")
    if valid_every < 2:
        raise DataError(
            f"valid_every={valid_every} must be >= 2 so both train and valid get trials"
        )


def _neuron_mean_rates(
    rng: np.random.Generator,
    n_neurons: int,
    mean_rate: float,
    mean_rate_hz: list[float] | None,
    bin_size_ms: float,
) -> float | np.ndarray:
    """Mean spikes per bin: one value for all neurons, or one per neuron from a range in Hz."""
    if mean_rate_hz is None:
        if mean_rate <= 0:
            raise DataError(f"mean_rate={mean_rate} must be > 0 spikes per bin")
        return mean_rate
    if len(mean_rate_hz) != 2 or not 0 < mean_rate_hz[0] <= mean_rate_hz[1]:
        raise DataError(f"mean_rate_hz={mean_rate_hz} must be [low, high] with 0 < low <= high")
    per_bin = np.asarray(mean_rate_hz, dtype=float) * bin_size_ms / 1000.0
    return rng.uniform(per_bin[0], per_bin[1], size=n_neurons)


def _description(name: str, seed: int, params: dict[str, Any]) -> str:
    return f"synthetic {name} (lfads_lightning.data.synth); seed={seed}; params={json.dumps(params, sort_keys=True)}"


def lorenz(
    seed: int = 0,
    n_conditions: int = 40,
    trials_per_condition: int = 25,
    n_steps: int = 50,
    n_neurons: int = 30,
    n_heldout: int = 0,
    n_forward: int = 0,
    valid_every: int = 5,
    dt: float = 0.01,
    burn_in: int = 500,
    log_rate_std: float = 1.0,
    mean_rate: float = 0.75,
    max_rate: float = 5.0,
    bin_size_ms: float = 10.0,
    mean_rate_hz: list[float] | None = None,
) -> dict[str, Any]:
    """Lorenz-attractor latents read out through exp(linear) into Poisson neurons.

    One trajectory per condition (one RK4 step of `dt` per bin, after `burn_in` steps from a
    random start so every condition lies on the attractor); each neuron's log-rate is scaled to
    std `log_rate_std` and offset so its mean rate is `mean_rate` spikes per bin. With
    `mean_rate_hz=[lo, hi]` each neuron's mean rate is instead drawn uniformly from lo..hi Hz
    (converted with `bin_size_ms`): the sparse regime of real cortex, e.g. [1, 3] at 10 ms.
    """
    params = {k: v for k, v in locals().items() if k != "seed"}
    _check_common(n_neurons, n_heldout, n_forward, valid_every)
    rng = np.random.default_rng(seed)
    mean_rate = _neuron_mean_rates(rng, n_neurons, mean_rate, mean_rate_hz, bin_size_ms)
    sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0

    def deriv(x: np.ndarray) -> np.ndarray:
        return _lorenz_deriv(x, sigma, rho, beta)

    n_total = n_steps + n_forward
    x = rng.uniform(-1.0, 1.0, size=(n_conditions, 3)) * np.array([10.0, 10.0, 10.0])
    x[:, 2] += 25.0
    for _ in range(burn_in):
        x = _rk4(x, dt, deriv)
    latents = np.empty((n_conditions, n_total, 3))
    for t in range(n_total):
        latents[:, t] = x
        x = _rk4(x, dt, deriv)
    latents = (latents - latents.mean(axis=(0, 1))) / latents.std(axis=(0, 1))

    logits = latents @ rng.normal(size=(3, n_neurons))
    logits = logits.reshape(-1, n_neurons) * _readout_scale(
        logits.reshape(-1, n_neurons), log_rate_std, np.log(max_rate / np.max(mean_rate))
    )
    bias = np.log(mean_rate) - np.log(np.exp(logits).mean(axis=0))
    cond_rates = np.exp(logits + bias).reshape(n_conditions, n_total, n_neurons)

    cond = np.repeat(np.arange(n_conditions), trials_per_condition)
    splits = _split_trials(cond_rates[cond], cond, rng, n_steps, n_neurons - n_heldout, valid_every)
    attrs = {"bin_size_ms": float(bin_size_ms), "description": _description("lorenz", seed, params)}
    return {"splits": splits, "attrs": attrs}


def chaotic_rnn(
    seed: int = 0,
    n_conditions: int = 400,
    trials_per_condition: int = 10,
    n_steps: int = 100,
    n_neurons: int = 50,
    n_heldout: int = 0,
    n_forward: int = 0,
    valid_every: int = 5,
    gain: float = 1.5,
    tau_ms: float = 25.0,
    bin_size_ms: float = 10.0,
    substeps: int = 10,
    x0_std: float = 1.0,
    max_rate_hz: float = 30.0,
) -> dict[str, Any]:
    """The original LFADS benchmark: a chaotic vanilla RNN, tau dx/dt = -x + gain W tanh(x).

    Each condition starts from its own random state; the RNN is integrated with forward Euler
    at `substeps` steps per bin and sampled once per bin. Unit rates are (tanh(x) + 1) / 2 times
    `max_rate_hz`, converted to spikes per bin.
    """
    params = {k: v for k, v in locals().items() if k != "seed"}
    _check_common(n_neurons, n_heldout, n_forward, valid_every)
    rng = np.random.default_rng(seed)
    weights = gain * rng.normal(size=(n_neurons, n_neurons)) / np.sqrt(n_neurons)
    x = x0_std * rng.normal(size=(n_conditions, n_neurons))
    step = bin_size_ms / substeps / tau_ms
    n_total = n_steps + n_forward
    states = np.empty((n_conditions, n_total, n_neurons))
    for t in range(n_total):
        states[:, t] = x
        for _ in range(substeps):
            x = x + step * (-x + np.tanh(x) @ weights.T)
    max_per_bin = max_rate_hz * bin_size_ms / 1000.0
    cond_rates = (np.tanh(states) + 1.0) / 2.0 * max_per_bin

    cond = np.repeat(np.arange(n_conditions), trials_per_condition)
    splits = _split_trials(cond_rates[cond], cond, rng, n_steps, n_neurons - n_heldout, valid_every)
    attrs = {
        "bin_size_ms": float(bin_size_ms),
        "description": _description("chaotic-rnn", seed, params),
    }
    return {"splits": splits, "attrs": attrs}


def lorenz_sparse(
    seed: int = 0,
    n_conditions: int = 40,
    trials_per_condition: int = 20,
    n_steps: int = 50,
    n_neurons: int = 60,
    n_heldout: int = 0,
    n_forward: int = 0,
    valid_every: int = 5,
    mean_rate_hz: list[float] | None = None,
    bin_size_ms: float = 10.0,
    log_rate_std: float = 1.0,
) -> dict[str, Any]:
    """Lorenz in the regime real cortex shows: 60 neurons at 1-3 Hz in 10 ms bins (about 0.02
    spikes per bin, against 0.75 for `lorenz`), 640 train / 160 valid trials."""
    data = lorenz(
        seed=seed,
        n_conditions=n_conditions,
        trials_per_condition=trials_per_condition,
        n_steps=n_steps,
        n_neurons=n_neurons,
        n_heldout=n_heldout,
        n_forward=n_forward,
        valid_every=valid_every,
        mean_rate_hz=[1.0, 3.0] if mean_rate_hz is None else mean_rate_hz,
        bin_size_ms=bin_size_ms,
        log_rate_std=log_rate_std,
    )
    data["attrs"]["description"] = data["attrs"]["description"].replace(
        "synthetic lorenz", "synthetic lorenz-sparse", 1
    )
    return data


GENERATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "lorenz": lorenz,
    "lorenz-sparse": lorenz_sparse,
    "chaotic-rnn": chaotic_rnn,
}


def make_dataset(
    kind: str, out_path: str | Path, seed: int = 0, overwrite: bool = False, **params: Any
) -> Path:
    """Generate synthetic data of `kind` and write it to `out_path` in the session format."""
    if kind not in GENERATORS:
        raise DataError(f"unknown synthetic dataset {kind!r}; use one of {', '.join(GENERATORS)}")
    gen = GENERATORS[kind]
    valid = [p for p in inspect.signature(gen).parameters if p != "seed"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DataError(
            f"unknown parameter {unknown[0]!r} for synthetic {kind}; valid: {', '.join(valid)}"
        )
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path} already exists; pass --overwrite or choose another path")
    data = gen(seed=seed, **params)
    return write_session(out_path, data["splits"], data["attrs"], overwrite=overwrite)
