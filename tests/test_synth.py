"""Synthetic generators: layout, reproducibility, and spikes consistent with the true rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfads_lightning.data.format import load_session
from lfads_lightning.data.synth import GENERATORS, chaotic_rnn, lorenz, make_dataset
from lfads_lightning.errors import DataError


def test_lorenz_defaults_layout_and_rates():
    data = lorenz(seed=0)
    splits, attrs = data["splits"], data["attrs"]
    assert splits["train"]["encod_data"].shape == (800, 50, 30)
    assert splits["valid"]["recon_data"].shape == (200, 50, 30)
    assert attrs["bin_size_ms"] == 10.0
    assert np.array_equal(splits["valid"]["inds"], np.arange(0, 1000, 5))
    assert not np.any(splits["train"]["inds"] % 5 == 0)
    # every condition appears in both splits
    assert set(splits["valid"]["cond_idx"]) == set(splits["train"]["cond_idx"]) == set(range(40))
    truth = np.concatenate([splits[s]["truth"] for s in ("train", "valid")])
    assert 0.5 <= truth.mean() <= 1.0
    assert 2.0 <= truth.max() <= 6.0
    spikes = np.concatenate([splits[s]["recon_data"] for s in ("train", "valid")])
    assert abs(spikes.mean() - truth.mean()) < 0.02
    per_neuron = spikes.mean(axis=(0, 1)) / truth.mean(axis=(0, 1))
    assert np.all(np.abs(per_neuron - 1) < 0.1)


def test_lorenz_deterministic_by_seed():
    a, b, c = (
        lorenz(seed=3, n_conditions=5),
        lorenz(seed=3, n_conditions=5),
        lorenz(seed=4, n_conditions=5),
    )
    for field in ("recon_data", "truth"):
        np.testing.assert_array_equal(a["splits"]["train"][field], b["splits"]["train"][field])
        assert not np.array_equal(a["splits"]["train"][field], c["splits"]["train"][field])
    assert a["attrs"] == b["attrs"]


def test_lorenz_heldout_and_forward_layout():
    data = lorenz(
        seed=1,
        n_conditions=4,
        trials_per_condition=5,
        n_steps=30,
        n_neurons=20,
        n_heldout=6,
        n_forward=10,
    )
    tr = data["splits"]["train"]
    assert tr["encod_data"].shape == (16, 30, 14)
    assert tr["recon_data"].shape == tr["truth"].shape == (16, 40, 20)
    # encod = held-in neurons over the observed window = the leading block of recon
    np.testing.assert_array_equal(tr["encod_data"], tr["recon_data"][:, :30, :14])
    # trials of one condition share their rates (one trajectory per condition)
    same = tr["cond_idx"] == tr["cond_idx"][0]
    assert np.all(tr["truth"][same] == tr["truth"][same][0])


def test_lorenz_rejects_bad_params():
    with pytest.raises(DataError, match="n_heldout"):
        lorenz(n_neurons=5, n_heldout=5)


def test_chaotic_rnn_rates_and_layout():
    data = chaotic_rnn(seed=0, n_conditions=40, trials_per_condition=5)
    tr, va = data["splits"]["train"], data["splits"]["valid"]
    assert tr["encod_data"].shape == (160, 100, 50) and va["encod_data"].shape == (40, 100, 50)
    truth = np.concatenate([tr["truth"], va["truth"]])
    assert truth.min() >= 0 and truth.max() <= 0.3 + 1e-6  # 30 Hz in 10 ms bins
    assert truth.max() > 0.29
    spikes = np.concatenate([tr["recon_data"], va["recon_data"]])
    assert abs(spikes.mean() - truth.mean()) < 0.01
    # chaotic, not decaying to a fixed point: rates keep moving late in the trial
    assert truth[:, 50:].std(axis=1).mean() > 0.03
    again = chaotic_rnn(seed=0, n_conditions=40, trials_per_condition=5)
    np.testing.assert_array_equal(again["splits"]["train"]["recon_data"], tr["recon_data"])


def test_make_dataset_writes_a_valid_file(tmp_path):
    path = make_dataset("lorenz", tmp_path / "l.h5", seed=2, n_conditions=5, trials_per_condition=5)
    sess = load_session(path)
    assert sess.bin_size_ms == 10.0 and sess.encod_seq_len == 50
    assert sess.splits["train"].truth is not None and sess.splits["train"].cond_idx is not None
    assert "lorenz" in sess.description and "seed=2" in sess.description
    params = json.loads(sess.description.split("params=", 1)[1])
    assert params["n_conditions"] == 5
    with pytest.raises(DataError, match="already exists"):
        make_dataset("lorenz", path)
    make_dataset("chaotic-rnn", path, overwrite=True, n_conditions=5)
    assert load_session(path).encod_dim == 50


def test_make_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="unknown synthetic dataset 'spiral'"):
        make_dataset("spiral", tmp_path / "x.h5")
    with pytest.raises(DataError, match="unknown parameter 'n_neuron'.*n_neurons"):
        make_dataset("lorenz", tmp_path / "x.h5", n_neuron=3)
    assert set(GENERATORS) == {"lorenz", "lorenz-sparse", "chaotic-rnn"}


def test_lorenz_sparse_regime_rates_per_neuron():
    """lorenz-sparse: 60 neurons whose mean rates lie in 1-3 Hz at 10 ms bins, 640/160 trials."""
    data = GENERATORS["lorenz-sparse"](seed=0)
    splits = data["splits"]
    assert splits["train"]["encod_data"].shape == (640, 50, 60)
    assert splits["valid"]["encod_data"].shape == (160, 50, 60)
    truth = np.concatenate([splits[s]["truth"] for s in ("train", "valid")])
    hz = truth.mean(axis=(0, 1)) * 1000.0 / data["attrs"]["bin_size_ms"]
    assert np.all(hz >= 1.0 - 1e-6) and np.all(hz <= 3.0 + 1e-6)
    assert hz.max() - hz.min() > 1.0  # drawn per neuron, not one shared rate
    spikes = np.concatenate([splits[s]["recon_data"] for s in ("train", "valid")])
    assert abs(spikes.mean() - 0.02) < 0.002
    assert "lorenz-sparse" in data["attrs"]["description"]


def test_lorenz_mean_rate_hz_leaves_the_dense_default_unchanged():
    """The per-neuron range draws from the generator only when given, so seeds keep their data."""
    dense = lorenz(seed=2, n_conditions=4, trials_per_condition=5)
    again = lorenz(seed=2, n_conditions=4, trials_per_condition=5, mean_rate_hz=None)
    np.testing.assert_array_equal(
        dense["splits"]["train"]["truth"], again["splits"]["train"]["truth"]
    )
    np.testing.assert_allclose(dense["splits"]["train"]["truth"].mean(), 0.75, rtol=0.05)


@pytest.mark.parametrize("bad", [[0.0, 2.0], [3.0, 1.0], [1.0]])
def test_lorenz_mean_rate_hz_rejects_bad_ranges(bad):
    with pytest.raises(DataError, match="mean_rate_hz"):
        lorenz(seed=0, n_conditions=2, trials_per_condition=5, mean_rate_hz=bad)
