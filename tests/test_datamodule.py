"""Batches come from one session at a time, with the shapes and masks the model expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfads_lightning.data.datamodule import Batch, LfadsDataModule
from lfads_lightning.data.synth import make_dataset
from lfads_lightning.errors import DataError


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    d = tmp_path_factory.mktemp("sessions")
    a = make_dataset(
        "lorenz",
        d / "a.h5",
        seed=0,
        n_conditions=6,
        trials_per_condition=10,
        n_steps=20,
        n_neurons=12,
    )
    b = make_dataset(
        "lorenz",
        d / "b.h5",
        seed=1,
        n_conditions=5,
        trials_per_condition=9,
        n_steps=20,
        n_neurons=8,
        n_heldout=2,
    )
    return [str(a), str(b)]


def _collect(loader) -> list[Batch]:
    return list(iter(loader))


def test_batches_are_single_session(two_sessions):
    dm = LfadsDataModule(two_sessions, batch_size=16)
    assert dm.encod_dims == [12, 6] and dm.recon_dims == [12, 8]
    assert (dm.encod_seq_len, dm.recon_seq_len, dm.ext_input_dim) == (20, 20, 0)
    n_train = [s.splits["train"].n_trials for s in dm.sessions]
    assert n_train == [48, 36]
    batches = _collect(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 3 + 3
    seen = {0: [], 1: []}
    for b in batches:
        assert isinstance(b, Batch)
        s = int(b.session)
        assert b.session.dtype == torch.long and b.session.ndim == 0
        n = len(b.index)
        assert 1 <= n <= 16
        assert b.encod_data.shape == (n, 20, dm.encod_dims[s])
        assert b.recon_data.shape == (n, 20, dm.recon_dims[s])
        assert b.ext_input.shape == (n, 20, 0)
        assert b.truth.shape == (n, 20, dm.recon_dims[s])
        assert b.sv_mask.shape == b.encod_data.shape and bool((b.sv_mask == 1).all())
        split = dm.sessions[s].splits["train"]
        np.testing.assert_array_equal(b.encod_data.numpy(), split.encod_data[b.index.numpy()])
        seen[s].extend(b.index.tolist())
    assert sorted(seen[0]) == list(range(48)) and sorted(seen[1]) == list(range(36))


def test_train_shuffles_per_epoch_deterministically(two_sessions):
    dm = LfadsDataModule(two_sessions, batch_size=16, seed=3)
    loader = dm.train_dataloader()
    e0 = [(int(b.session), b.index.tolist()) for b in loader]
    e1 = [(int(b.session), b.index.tolist()) for b in loader]
    assert e0 != e1  # reshuffled each epoch
    loader.sampler.set_epoch(0)  # what Lightning does on resume
    assert [(int(b.session), b.index.tolist()) for b in loader] == e0
    again = LfadsDataModule(two_sessions, batch_size=16, seed=3).train_dataloader()
    assert [(int(b.session), b.index.tolist()) for b in again] == e0


def test_validation_in_order(two_sessions):
    dm = LfadsDataModule(two_sessions, batch_size=5)
    batches = _collect(dm.val_dataloader())
    order = [(int(b.session), i) for b in batches for i in b.index.tolist()]
    n_valid = [s.splits["valid"].n_trials for s in dm.sessions]
    assert order == [(0, i) for i in range(n_valid[0])] + [(1, i) for i in range(n_valid[1])]


def test_sv_mask_rate_and_determinism(two_sessions):
    dm = LfadsDataModule(two_sessions, batch_size=100, sv_rate=0.25, sv_seed=7)
    masks = [torch.cat([b.sv_mask for b in dm.split_loader("train", s)]) for s in (0, 1)]
    for m in masks:
        assert set(m.unique().tolist()) == {0.0, 1.0}
        assert abs(1 - m.mean().item() - 0.25) < 0.03
    assert not torch.equal(masks[0][:, :, :6], masks[1][:, :, :6])  # per session
    # fixed across epochs and instances; changes with the seed
    loader = dm.train_dataloader()
    for _ in range(2):
        for b in loader:
            ref = masks[int(b.session)][b.index]
            assert torch.equal(b.sv_mask, ref)
    same = LfadsDataModule(two_sessions, batch_size=100, sv_rate=0.25, sv_seed=7)
    assert torch.equal(next(iter(same.split_loader("train", 0))).sv_mask, masks[0][:100])
    other = LfadsDataModule(two_sessions, batch_size=100, sv_rate=0.25, sv_seed=8)
    assert not torch.equal(next(iter(other.split_loader("train", 0))).sv_mask, masks[0][:100])
    valid = next(iter(dm.split_loader("valid", 0))).sv_mask
    assert 0 < valid.mean().item() < 1


def test_split_loader_order_and_errors(two_sessions):
    dm = LfadsDataModule(two_sessions, batch_size=16)
    batches = _collect(dm.split_loader("train", 1, batch_size=10))
    assert [len(b.index) for b in batches] == [10, 10, 10, 6]
    assert torch.cat([b.index for b in batches]).tolist() == list(range(36))
    assert all(int(b.session) == 1 for b in batches)
    with pytest.raises(DataError, match="no 'test' split"):
        dm.split_loader("test", 0)
    with pytest.raises(DataError, match="out of range"):
        dm.split_loader("train", 2)


def test_test_split_without_recon_is_nan(tmp_path):
    from lfads_lightning.data.format import write_session

    rng = np.random.default_rng(0)
    rec = rng.poisson(1.0, size=(10, 8, 4)).astype(np.float32)
    splits = {
        "train": {"encod_data": rec[:6, :5, :3], "recon_data": rec[:6]},
        "valid": {"encod_data": rec[6:8, :5, :3], "recon_data": rec[6:8]},
        "test": {"encod_data": rec[8:, :5, :3]},
    }
    path = write_session(tmp_path / "t.h5", splits, {})
    dm = LfadsDataModule([str(path)], batch_size=4)
    b = next(iter(dm.split_loader("test", 0)))
    assert b.recon_data.shape == (2, 8, 4) and torch.isnan(b.recon_data).all()
    assert b.truth.shape == (2, 0, 0)


def test_sessions_must_share_bins(tmp_path, two_sessions):
    other = make_dataset(
        "lorenz", tmp_path / "c.h5", n_conditions=5, trials_per_condition=5, n_steps=15
    )
    with pytest.raises(DataError, match="sessions disagree on encod_seq_len") as info:
        LfadsDataModule([two_sessions[0], str(other)], batch_size=8)
    assert two_sessions[0] in str(info.value) and str(other) in str(info.value)


def test_errors_surface_at_construction(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LfadsDataModule([str(tmp_path / "missing.h5")], batch_size=8)
