"""Every diagnostic figure builds with the expected panels and saves as a PNG."""

from __future__ import annotations

import numpy as np
import pytest

from lfads_lightning.evaluation import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """Small synthetic session: condition-dependent rotating latents -> rates -> spikes."""
    rng = np.random.default_rng(0)
    n_trials, n_time, n_neurons = 8, 30, 12
    cond = np.arange(n_trials) % 4
    t = np.linspace(0, 1, n_time)
    phase = cond[:, None] * np.pi / 2
    latents = np.stack([np.sin(2 * np.pi * t + phase), np.cos(2 * np.pi * t + phase)], axis=-1)
    truth = np.exp(latents @ rng.normal(size=(2, n_neurons)) - 1.0)
    return {
        "cond": cond,
        "truth": truth,
        "spikes": rng.poisson(truth).astype(float),
        "rates": truth * np.exp(rng.normal(scale=0.1, size=truth.shape)),
        "factors": latents @ rng.normal(size=(2, 5)),
        "inputs": rng.normal(size=(n_trials, n_time, 2)),
    }


def _check_png(fig, path) -> None:
    out = figures.save_figure(fig, path)
    assert out == path
    content = path.read_bytes()
    assert len(content) > 1000
    assert content.startswith(PNG_MAGIC)


def test_raster_vs_rates_with_truth(data, tmp_path):
    fig = figures.raster_vs_rates(
        data["spikes"], data["rates"], data["truth"], trial_ids=(0, 1, 2), bin_size_ms=5.0
    )
    # 3 trials x 3 image panels + one colorbar per column
    assert len(fig.axes) == 3 * 3 + 3
    assert fig.axes[0].get_xlim() == (0.0, 30 * 5.0)
    _check_png(fig, tmp_path / "raster.png")


def test_raster_vs_rates_without_truth_and_missing_trials(data, tmp_path):
    spikes = data["spikes"].copy()
    spikes[:, 20:] = np.nan  # unobserved forward bins
    fig = figures.raster_vs_rates(spikes, data["rates"], trial_ids=(1, 99), max_neurons=5)
    assert len(fig.axes) == 1 * 2 + 2  # trial 99 does not exist
    assert fig.axes[0].images[0].get_array().shape == (5, 30)
    _check_png(fig, tmp_path / "raster2.png")


@pytest.mark.parametrize("n_fac", [5, 2, 1])
def test_factor_trajectories(data, tmp_path, n_fac):
    factors = data["factors"][..., :n_fac]
    fig = figures.factor_trajectories(factors, data["cond"] if n_fac > 1 else None, n_trials=6)
    assert len(fig.axes) == 2
    assert fig.axes[0].name == "3d"
    assert len(fig.axes[0].lines) == 6 and len(fig.axes[1].lines) == 6
    _check_png(fig, tmp_path / f"factors{n_fac}.png")


def test_inferred_inputs(data, tmp_path):
    fig = figures.inferred_inputs(data["inputs"], trial_ids=(0, 1, 2), bin_size_ms=5.0)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 3 + 1  # three trials and the zero line
    _check_png(fig, tmp_path / "inputs.png")


@pytest.mark.parametrize("inputs", [np.zeros((4, 10, 0)), None])
def test_inferred_inputs_autonomous(inputs, tmp_path):
    fig = figures.inferred_inputs(inputs)
    assert len(fig.axes) == 1
    assert "autonomous" in fig.axes[0].texts[0].get_text()
    _check_png(fig, tmp_path / "inputs0.png")


def test_rates_vs_truth(data, tmp_path):
    fig = figures.rates_vs_truth(data["rates"], data["truth"], bin_size_ms=5.0)
    assert len(fig.axes) == 4
    assert "R2 = " in fig.get_suptitle()
    assert len(fig.axes[0].lines) == 2 * 3  # inferred and true, three trials
    _check_png(fig, tmp_path / "rvt.png")
    fig = figures.rates_vs_truth(data["rates"], data["truth"], neuron_ids=(0, 1, 2))
    assert len(fig.axes) == 3  # the unused fourth grid cell is removed
    _check_png(fig, tmp_path / "rvt3.png")


def test_rates_vs_truth_shape_mismatch(data):
    with pytest.raises(ValueError):
        figures.rates_vs_truth(data["rates"], data["truth"][:, :5])


def test_save_figure_creates_parent_dirs(data, tmp_path):
    fig = figures.inferred_inputs(data["inputs"])
    _check_png(fig, tmp_path / "a" / "b" / "inputs.png")
