"""Diagnostic figures of a fitted LFADS model: spikes vs inferred rates, factor trajectories,
inferred inputs, and inferred vs ground-truth rates.

Figures are built as bare `matplotlib.figure.Figure` objects rendered by the Agg canvas, not via
pyplot: nothing depends on a display or on pyplot's global figure registry, so training workers
on headless nodes can make them and nothing leaks if a caller forgets to close one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lfads_lightning.evaluation import metrics

_CMAP_SPIKES = "Greys"
_CMAP_RATES = "viridis"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _valid_trials(trial_ids: Sequence[int], n_trials: int) -> list[int]:
    """The requested trials that exist (a short split must not crash the figure code)."""
    ids = [int(t) for t in trial_ids if 0 <= int(t) < n_trials]
    return ids or ([0] if n_trials > 0 else [])


def _finite_max(x: np.ndarray) -> float:
    """Largest finite value (0 if none), so all-NaN forward bins do not break the colour scale."""
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size else 0.0


def _message_figure(text: str) -> Figure:
    fig = _new_figure(5, 2)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def raster_vs_rates(
    spikes: np.ndarray,
    rates: np.ndarray,
    truth: np.ndarray | None = None,
    trial_ids: Sequence[int] = (0, 1, 2),
    bin_size_ms: float = 1.0,
    max_neurons: int | None = None,
) -> Figure:
    """Per trial (rows): spike counts, inferred rates and optionally true rates as images.

    All panels share the neuron order; rates and true rates share one colour scale so their
    brightness can be compared directly. Arrays are trials x time x neurons; if they differ in
    time or neurons, the common leading part is shown.
    """
    spikes = np.asarray(spikes, dtype=float)
    rates = np.asarray(rates, dtype=float)
    panels = [("spike counts", spikes, _CMAP_SPIKES), ("inferred rates", rates, _CMAP_RATES)]
    if truth is not None:
        panels.append(("true rates", np.asarray(truth, dtype=float), _CMAP_RATES))
    n_time = min(p[1].shape[1] for p in panels)
    n_neurons = min(p[1].shape[2] for p in panels)
    if max_neurons is not None:
        n_neurons = min(n_neurons, max_neurons)
    trials = _valid_trials(trial_ids, min(p[1].shape[0] for p in panels))
    if not trials or n_time == 0 or n_neurons == 0:
        return _message_figure("no trials, bins or neurons to show")
    panels = [(t, a[trials, :n_time, :n_neurons], c) for t, a, c in panels]

    rate_vmax = max(_finite_max(a) for _, a, c in panels if c == _CMAP_RATES)
    spike_vmax = max(_finite_max(panels[0][1]), 1.0)
    extent = (0.0, n_time * bin_size_ms, n_neurons - 0.5, -0.5)

    fig = _new_figure(4.2 * len(panels), 2.4 * len(trials) + 0.6)
    axes = fig.subplots(len(trials), len(panels), squeeze=False, sharex=True, sharey=True)
    for col, (title, data, cmap) in enumerate(panels):
        vmax = spike_vmax if cmap == _CMAP_SPIKES else rate_vmax
        for row, trial in enumerate(trials):
            ax = axes[row, col]
            image = ax.imshow(
                data[row].T,
                aspect="auto",
                interpolation="nearest",
                cmap=cmap,
                vmin=0.0,
                vmax=vmax,
                extent=extent,
            )
            ax.set_title(f"trial {trial}: {title}", fontsize=9)
            if col == 0:
                ax.set_ylabel("neuron")
            if row == len(trials) - 1:
                ax.set_xlabel("time (ms)")
        label = "spikes / bin" if cmap == _CMAP_SPIKES else "rate (spikes / bin)"
        fig.colorbar(image, ax=axes[:, col], label=label, shrink=0.9)
    fig.suptitle("Spikes vs inferred rates")
    return fig


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of x onto its top-k principal components; also the variance fractions."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    frac = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    return centred @ vt[:k].T, frac[:k]


def factor_trajectories(
    factors: np.ndarray, cond_idx: np.ndarray | None = None, n_trials: int = 40
) -> Figure:
    """Factors projected onto their top 3 principal components: a 3-D trajectory per trial and
    the PC1-PC2 plane, coloured by condition when conditions are known.

    PCs are fitted on all trials x time bins; only the first `n_trials` trials are drawn.
    With fewer than 3 factors the missing PCs are drawn as 0.
    """
    factors = np.asarray(factors, dtype=float)
    n_tr, n_time, n_fac = factors.shape
    if n_tr == 0 or n_time == 0 or n_fac == 0:
        return _message_figure("no factors to show")
    k = min(3, n_fac)
    proj, frac = _pca(factors.reshape(-1, n_fac), k)
    proj = proj.reshape(n_tr, n_time, k)
    if k < 3:
        proj = np.concatenate([proj, np.zeros((n_tr, n_time, 3 - k))], axis=2)
        frac = np.concatenate([frac, np.zeros(3 - k)])
    shown = min(n_trials, n_tr)

    if cond_idx is not None:
        cond_idx = np.asarray(cond_idx).reshape(-1)[:n_tr]
        conditions = np.unique(cond_idx[:shown])
        cmap = _colormap("hsv" if len(conditions) > 10 else "tab10")
        rank = {c: i for i, c in enumerate(conditions)}
        denom = len(conditions) if len(conditions) > 10 else 10
        colors = [cmap(rank[c] / denom) for c in cond_idx[:shown]]
    else:
        cmap = _colormap("viridis")
        colors = [cmap(i / max(shown - 1, 1)) for i in range(shown)]

    fig = _new_figure(11, 5)
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax2 = fig.add_subplot(1, 2, 2)
    for i in range(shown):
        traj = proj[i]
        ax3.plot(traj[:, 0], traj[:, 1], traj[:, 2], color=colors[i], lw=0.9, alpha=0.8)
        ax3.scatter(*traj[0], color=colors[i], s=8)
        ax2.plot(traj[:, 0], traj[:, 1], color=colors[i], lw=0.9, alpha=0.8)
        ax2.scatter(traj[0, 0], traj[0, 1], color=colors[i], s=8)
    labels = [f"PC{j + 1} ({100 * frac[j]:.0f}%)" for j in range(3)]
    ax3.set_xlabel(labels[0])
    ax3.set_ylabel(labels[1])
    ax3.set_zlabel(labels[2])
    ax3.set_title("factor trajectories (3 PCs)")
    ax2.set_xlabel(labels[0])
    ax2.set_ylabel(labels[1])
    ax2.set_title("PC1 vs PC2 (dots: trial start)")
    colouring = "coloured by condition" if cond_idx is not None else "coloured by trial"
    fig.suptitle(f"Factors, {shown} of {n_tr} trials, {colouring} ({n_fac} factors)")
    return fig


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def inferred_inputs(
    inputs: np.ndarray | None,
    trial_ids: Sequence[int] = (0, 1, 2),
    bin_size_ms: float = 1.0,
) -> Figure:
    """Controller outputs (inferred inputs), one panel per input dimension, a line per trial.

    An autonomous model (no controller, co_dim 0) gets a figure that says so rather than an
    error, so the figure set of every run has the same names.
    """
    if inputs is None or np.asarray(inputs).ndim != 3 or np.asarray(inputs).shape[2] == 0:
        return _message_figure("no inferred inputs (autonomous model)")
    inputs = np.asarray(inputs, dtype=float)
    n_tr, n_time, co_dim = inputs.shape
    trials = _valid_trials(trial_ids, n_tr)
    if not trials:
        return _message_figure("no trials to show")
    t = (np.arange(n_time) + 0.5) * bin_size_ms
    fig = _new_figure(9, 1.8 * co_dim + 0.8)
    axes = fig.subplots(co_dim, 1, squeeze=False, sharex=True)[:, 0]
    for d, ax in enumerate(axes):
        for trial in trials:
            ax.plot(t, inputs[trial, :, d], lw=1.0, label=f"trial {trial}")
        ax.axhline(0.0, color="0.7", lw=0.6, zorder=0)
        ax.set_ylabel(f"input {d + 1}")
    axes[0].legend(loc="upper right", fontsize=8, ncols=min(len(trials), 5))
    axes[-1].set_xlabel("time (ms)")
    fig.suptitle("Inferred inputs (controller output means)")
    return fig


def rates_vs_truth(
    rates: np.ndarray,
    truth: np.ndarray,
    neuron_ids: Sequence[int] = (0, 1, 2, 3),
    trial_ids: Sequence[int] = (0, 1, 2),
    bin_size_ms: float = 1.0,
) -> Figure:
    """Inferred (solid) vs true (dashed) rates over time, one panel per neuron, a colour per
    trial; the title gives rate R2 over all trials, bins and neurons."""
    rates = np.asarray(rates, dtype=float)
    truth = np.asarray(truth, dtype=float)
    if rates.shape != truth.shape:
        raise ValueError(f"rates {rates.shape} and truth {truth.shape} differ in shape")
    n_tr, n_time, n_neurons = rates.shape
    neurons = [int(n) for n in neuron_ids if 0 <= int(n) < n_neurons]
    trials = _valid_trials(trial_ids, n_tr)
    if not neurons or not trials:
        return _message_figure("no neurons or trials to show")
    r2 = metrics.rate_r2(truth, rates)
    n_cols = 1 if len(neurons) == 1 else 2
    n_rows = math.ceil(len(neurons) / n_cols)
    fig = _new_figure(5.5 * n_cols, 2.3 * n_rows + 0.7)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True).ravel()
    t = (np.arange(n_time) + 0.5) * bin_size_ms
    colors = _colormap("tab10")
    for ax, neuron in zip(axes, neurons, strict=False):
        for i, trial in enumerate(trials):
            c = colors(i % 10)
            ax.plot(t, truth[trial, :, neuron], "--", color=c, lw=1.0)
            ax.plot(t, rates[trial, :, neuron], "-", color=c, lw=1.2, label=f"trial {trial}")
        ax.set_title(f"neuron {neuron}", fontsize=9)
        ax.set_ylabel("rate (spikes / bin)")
    for ax in axes[len(neurons) :]:
        fig.delaxes(ax)
    for ax in axes[: len(neurons)][-n_cols:]:
        # The lowest panel of each column, whose tick labels sharex hid if a panel was removed.
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("time (ms)")
    axes[0].legend(loc="upper right", fontsize=7)
    fig.suptitle(f"Inferred (solid) vs true (dashed) rates; rate R2 = {r2:.3f}")
    return fig


def _pick(requested: Sequence[int] | None, available: np.ndarray, k: int) -> list:
    if requested is None:
        return list(available[:k])
    return [c for c in requested if c in set(available.tolist())]


def rates_by_condition(
    spikes: np.ndarray,
    rates: np.ndarray,
    cond_idx: np.ndarray | None = None,
    neuron_ids: Sequence[int] | None = None,
    conditions: Sequence[int] | None = None,
    bin_size_ms: float = 1.0,
    event_bin: int = 0,
    event_name: str = "event",
    smooth_ms: float = 50.0,
) -> Figure:
    """Per neuron (rows): smoothed single-trial spikes, trial-averaged PSTH and inferred
    single-trial rates (columns), a colour per condition, time relative to an event.

    This is the layout of the AutoLFADS deployment paper's inferred-rates figure: single-trial
    rates should look like the PSTH, not like the noisy smoothed spikes. By default the four
    most active neurons and the first six conditions are shown.
    """
    spikes = np.asarray(spikes, dtype=float)
    rates = np.asarray(rates, dtype=float)
    if spikes.shape != rates.shape:
        raise ValueError(f"spikes {spikes.shape} and rates {rates.shape} differ in shape")
    n_tr, n_time, n_neurons = spikes.shape
    if n_tr == 0 or n_time == 0 or n_neurons == 0:
        return _message_figure("no trials, bins or neurons to show")
    cond = np.zeros(n_tr, dtype=int) if cond_idx is None else np.asarray(cond_idx).reshape(-1)
    if neuron_ids is None:
        neuron_ids = np.argsort(-np.nanmean(spikes, axis=(0, 1)), kind="stable")[:4]
    neurons = [int(n) for n in neuron_ids if 0 <= int(n) < n_neurons]
    shown = _pick(conditions, np.unique(cond), 6)
    if not neurons or not shown:
        return _message_figure("no neurons or conditions to show")
    smoothed = metrics.smooth_spikes(spikes, smooth_ms / bin_size_ms)
    to_hz = 1000.0 / bin_size_ms
    t = (np.arange(n_time) - event_bin + 0.5) * bin_size_ms
    colors = _colormap("tab10")
    fig = _new_figure(12, 2.2 * len(neurons) + 0.8)
    axes = fig.subplots(len(neurons), 3, squeeze=False, sharex=True)
    titles = ("smoothed spikes (single trials)", "PSTH (trial average)", "inferred rates")
    for row, neuron in enumerate(neurons):
        for i, c in enumerate(shown):
            color = colors(i % 10)
            trials = np.flatnonzero(cond == c)
            for tr in trials:
                axes[row, 0].plot(t, smoothed[tr, :, neuron] * to_hz, color=color, lw=0.5)
                axes[row, 2].plot(t, rates[tr, :, neuron] * to_hz, color=color, lw=0.5)
            psth = np.nanmean(smoothed[trials, :, neuron], axis=0) * to_hz
            label = "all trials" if cond_idx is None else f"cond {c}"
            axes[row, 1].plot(t, psth, color=color, lw=1.5, label=label)
        top = max(ax.get_ylim()[1] for ax in axes[row])
        for col in range(3):
            axes[row, col].set_ylim(0, top)
            axes[row, col].axvline(0.0, color="0.6", lw=0.6, ls=":")
        axes[row, 0].set_ylabel(f"neuron {neuron}\nrate (Hz)")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=10)
        axes[-1, col].set_xlabel(f"time from {event_name} (ms)")
    axes[0, 1].legend(loc="upper right", fontsize=7, ncols=2)
    fig.suptitle("Single-trial inferred rates vs smoothed spikes and PSTHs")
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a PNG (dpi 110, tight bounding box) and close the figure to free its memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    # Figures made here are not registered with pyplot; close it there only if it is.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
    return path
