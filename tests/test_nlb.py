"""NLB tensor conversion on the real MC_Maze_Small files (skipped when they are absent)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_lightning.data.format import load_session
from lfads_lightning.data.nlb import convert_nlb_tensors
from lfads_lightning.errors import DataError

SRC = Path("/work/shared/data/mc_maze_small")
needs_data = pytest.mark.skipif(
    not (SRC / "mc_maze_small_train.h5").is_file(),
    reason=f"shared NLB data not present at {SRC} (MC_Maze_Small tensors)",
)


def _source(name: str, key: str) -> np.ndarray:
    with h5py.File(SRC / f"mc_maze_small_{name}.h5", "r") as f:
        return f[key][()]


@needs_data
def test_convert_mc_maze_small(tmp_path):
    sess = load_session(convert_nlb_tensors(SRC, tmp_path / "mcs.h5"))
    tr, va, te = (sess.splits[s] for s in ("train", "valid", "test"))
    assert (tr.n_trials, va.n_trials, te.n_trials) == (60, 15, 25)
    assert tr.encod_data.shape == (60, 140, 107) and tr.recon_data.shape == (60, 180, 142)
    assert te.encod_data.shape == (25, 140, 107) and te.recon_data.shape == (25, 180, 142)
    assert tr.behavior.shape == (60, 140, 2) and te.behavior is None
    assert sess.bin_size_ms == 5.0 and sess.behavior_lag_bins == 24
    assert "mc_maze_small" in sess.description

    np.testing.assert_array_equal(va.inds, np.arange(0, 75, 5))
    np.testing.assert_array_equal(np.sort(np.concatenate([tr.inds, va.inds])), np.arange(75))
    heldin, heldout = (
        _source("train", "train_spikes_heldin"),
        _source("train", "train_spikes_heldout"),
    )
    fwd_in = _source("train", "train_spikes_heldin_forward")
    fwd_out = _source("train", "train_spikes_heldout_forward")
    for split in (tr, va):
        i = split.inds
        np.testing.assert_array_equal(split.encod_data, heldin[i])
        np.testing.assert_array_equal(split.recon_data[:, :140, :107], heldin[i])
        np.testing.assert_array_equal(split.recon_data[:, :140, 107:], heldout[i])
        np.testing.assert_array_equal(split.recon_data[:, 140:, :107], fwd_in[i])
        np.testing.assert_array_equal(split.recon_data[:, 140:, 107:], fwd_out[i])
        np.testing.assert_array_equal(split.behavior, _source("train", "train_behavior")[i])

    np.testing.assert_array_equal(te.inds, np.arange(25))
    np.testing.assert_array_equal(te.encod_data, _source("val", "eval_spikes_heldin"))
    np.testing.assert_array_equal(
        te.recon_data[:, :140, :107], _source("val", "eval_spikes_heldin")
    )
    np.testing.assert_array_equal(
        te.recon_data[:, :140, 107:], _source("val", "eval_spikes_heldout")
    )
    assert np.isnan(te.recon_data[:, 140:]).all()
    assert not np.isnan(te.recon_data[:, :140]).any()


@needs_data
def test_convert_refuses_overwrite_and_other_lags(tmp_path):
    out = convert_nlb_tensors(SRC, tmp_path / "a.h5", behavior_lag_bins=3, bin_size_ms=5.0)
    assert load_session(out).behavior_lag_bins == 3
    with pytest.raises(DataError, match="already exists"):
        convert_nlb_tensors(SRC, out)


def test_missing_source_directory(tmp_path):
    with pytest.raises(DataError, match="NLB source directory not found"):
        convert_nlb_tensors(tmp_path / "nope", tmp_path / "out.h5")


def test_missing_train_file(tmp_path):
    with pytest.raises(DataError, match="expected exactly one <name>_train.h5.*found none"):
        convert_nlb_tensors(tmp_path, tmp_path / "out.h5")


def test_missing_dataset_and_unknown_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(src / "toy_train.h5", "w") as f:
        f["train_spikes_heldin"] = rng.poisson(1, size=(10, 6, 4)).astype(np.float32)
    with pytest.raises(DataError, match="missing NLB dataset 'train_spikes_heldout'"):
        convert_nlb_tensors(src, tmp_path / "out.h5")
    with h5py.File(src / "toy_train.h5", "a") as f:
        f["train_spikes_heldout"] = rng.poisson(1, size=(10, 6, 2)).astype(np.float32)
    sess = load_session(convert_nlb_tensors(src, tmp_path / "out.h5", bin_size_ms=20.0))
    assert sess.behavior_lag_bins == 0 and sess.bin_size_ms == 20.0
    assert sess.recon_seq_len == 6 and sess.recon_dim == 6 and "test" not in sess.splits
