"""The session file format: every validation rule fails with one line naming the problem."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_lightning.data import format as h5data
from lfads_lightning.data.format import load_session, write_session
from lfads_lightning.errors import DataError

N_TR, N_VA, N_TE, T_ENC, T_REC, C_ENC, C_REC = 8, 4, 3, 6, 9, 5, 7


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A valid flat {split_field: array} mapping with every optional dataset."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", N_TR), ("valid", N_VA), ("test", N_TE)):
        rec = rng.poisson(1.0, size=(n, T_REC, C_REC)).astype(np.float32)
        out[f"{split}_encod_data"] = rec[:, :T_ENC, :C_ENC].copy()
        out[f"{split}_recon_data"] = rec
        out[f"{split}_ext_input"] = rng.normal(size=(n, T_REC, 2)).astype(np.float32)
        out[f"{split}_behavior"] = rng.normal(size=(n, T_ENC, 2)).astype(np.float32)
        out[f"{split}_cond_idx"] = np.arange(n) % 2
        out[f"{split}_truth"] = np.ones((n, T_REC, C_REC), np.float32)
        out[f"{split}_inds"] = np.arange(n)
    return out


def _raw(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    """Write without validation, to produce broken files."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def _error(tmp_path: Path, arrays: dict[str, np.ndarray], recon: str = "poisson") -> str:
    path = _raw(tmp_path / "bad.h5", arrays)
    with pytest.raises(DataError) as info:
        load_session(path, recon)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def _as_splits(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    splits: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        split, _, field = key.partition("_")
        splits.setdefault(split, {})[field] = value
    return splits


def test_round_trip(tmp_path):
    arrays = _arrays()
    path = write_session(
        tmp_path / "s.h5",
        _as_splits(arrays),
        {"bin_size_ms": 5.0, "behavior_lag_bins": 3, "description": "x"},
    )
    sess = load_session(path)
    assert sess.path == path and sess.bin_size_ms == 5.0 and sess.behavior_lag_bins == 3
    assert sess.description == "x"
    assert set(sess.splits) == {"train", "valid", "test"}
    assert (sess.encod_dim, sess.recon_dim, sess.encod_seq_len, sess.recon_seq_len) == (
        C_ENC,
        C_REC,
        T_ENC,
        T_REC,
    )
    assert sess.ext_input_dim == 2
    for key, value in arrays.items():
        split, _, field = key.partition("_")
        got = getattr(sess.splits[split], field)
        np.testing.assert_array_equal(got, value)
        assert got.dtype == (np.int64 if field in ("cond_idx", "inds") else np.float32)
    assert sess.splits["valid"].n_trials == N_VA


def test_defaults_and_minimal_file(tmp_path):
    arrays = {
        k: v for k, v in _arrays().items() if k.split("_", 1)[1] in ("encod_data", "recon_data")
    }
    arrays = {k: v for k, v in arrays.items() if not k.startswith("test")}
    sess = load_session(_raw(tmp_path / "m.h5", arrays))
    assert sess.bin_size_ms == 1.0 and sess.behavior_lag_bins == 0 and sess.description == ""
    assert "test" not in sess.splits and sess.ext_input_dim == 0
    assert sess.splits["train"].truth is None


def test_test_split_without_recon(tmp_path):
    arrays = _arrays()
    del arrays["test_recon_data"], arrays["test_truth"]
    sess = load_session(_raw(tmp_path / "t.h5", arrays))
    assert sess.splits["test"].recon_data is None


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="not found.*lfads data synth lorenz"):
        load_session(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5 file.*malformed") as info:
        load_session(path)
    assert "\n" not in str(info.value)


def test_missing_required_dataset(tmp_path):
    arrays = _arrays()
    del arrays["valid_recon_data"]
    msg = _error(tmp_path, arrays)
    assert "missing required dataset 'valid_recon_data'" in msg
    assert "train_encod_data" in msg  # lists what is required


def test_orphan_split_needs_encod(tmp_path):
    arrays = _arrays()
    del arrays["test_encod_data"]
    assert "missing required dataset 'test_encod_data'" in _error(tmp_path, arrays)


def test_wrong_number_of_dims(tmp_path):
    arrays = _arrays()
    arrays["train_encod_data"] = arrays["train_encod_data"][:, :, 0]
    assert "'train_encod_data' has 2 dims" in _error(tmp_path, arrays)


def test_trial_count_mismatch(tmp_path):
    arrays = _arrays()
    arrays["train_recon_data"] = arrays["train_recon_data"][:-1]
    assert f"{N_TR} trials but train_recon_data has {N_TR - 1}" in _error(tmp_path, arrays)


@pytest.mark.parametrize("axis", [1, 2])
def test_recon_smaller_than_encod(tmp_path, axis):
    arrays = _arrays()
    sl = [slice(None)] * 3
    sl[axis] = slice(0, [T_ENC, C_ENC][axis - 1] - 1)
    for split in ("train", "valid", "test"):
        arrays[f"{split}_recon_data"] = arrays[f"{split}_recon_data"][tuple(sl)]
        del arrays[f"{split}_truth"], arrays[f"{split}_ext_input"]
    assert "need T_rec >= T_enc and C_rec >= C_enc" in _error(tmp_path, arrays)


@pytest.mark.parametrize(
    ("field", "key"), [("encod_data", "C_enc"), ("recon_data", "T_rec"), ("ext_input", "E")]
)
def test_splits_disagree(tmp_path, field, key):
    arrays = _arrays()
    x = arrays[f"valid_{field}"]
    arrays[f"valid_{field}"] = x[:, :-1] if key == "T_rec" else x[:, :, :-1]
    assert f"splits disagree on {key}" in _error(tmp_path, arrays)


def test_ext_input_missing_in_one_split(tmp_path):
    arrays = _arrays()
    del arrays["valid_ext_input"]
    assert "splits disagree on E: train has 2, valid has 0" in _error(tmp_path, arrays)


@pytest.mark.parametrize("field", ["ext_input", "truth", "behavior", "cond_idx", "inds"])
def test_optional_dataset_wrong_shape(tmp_path, field):
    arrays = _arrays()
    arrays[f"train_{field}"] = arrays[f"train_{field}"][:-1]
    assert f"dataset 'train_{field}' has shape" in _error(tmp_path, arrays)


def test_behavior_wrong_time_bins(tmp_path):
    arrays = _arrays()
    arrays["valid_behavior"] = arrays["valid_behavior"][:, :-1]
    assert "dataset 'valid_behavior' has shape" in _error(tmp_path, arrays)


def test_non_integer_cond_idx(tmp_path):
    arrays = _arrays()
    arrays["train_cond_idx"] = arrays["train_cond_idx"] + 0.5
    assert "'train_cond_idx' must hold integers" in _error(tmp_path, arrays)


def test_empty_split(tmp_path):
    arrays = {k: v[:0] if k.startswith("valid") else v for k, v in _arrays().items()}
    assert "split 'valid' has 0 trials" in _error(tmp_path, arrays)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_nan_in_encod(tmp_path, split):
    arrays = _arrays()
    arrays[f"{split}_encod_data"][1, 2, 3] = np.nan
    msg = _error(tmp_path, arrays)
    assert f"'{split}_encod_data' holds NaN or inf at index (1, 2, 3)" in msg


@pytest.mark.parametrize("split", ["train", "valid"])
def test_nan_in_recon(tmp_path, split):
    arrays = _arrays()
    arrays[f"{split}_recon_data"][0, -1, -1] = np.nan
    assert (
        f"'{split}_recon_data' holds NaN or inf at index (0, {T_REC - 1}, {C_REC - 1})"
        in _error(tmp_path, arrays)
    )


def test_nan_allowed_in_test_recon_but_not_inf(tmp_path):
    arrays = _arrays()
    arrays["test_recon_data"][:, T_ENC:] = np.nan
    sess = load_session(_raw(tmp_path / "ok.h5", arrays))
    assert np.isnan(sess.splits["test"].recon_data[:, T_ENC:]).all()
    arrays["test_recon_data"][0, 0, 0] = np.inf
    assert "'test_recon_data' holds inf at index (0, 0, 0)" in _error(tmp_path, arrays)


def test_inf_in_ext_input(tmp_path):
    arrays = _arrays()
    arrays["test_ext_input"][2, 0, 1] = -np.inf
    assert "'test_ext_input' holds NaN or inf at index (2, 0, 1)" in _error(tmp_path, arrays)


@pytest.mark.parametrize("field", ["encod_data", "recon_data"])
def test_poisson_rejects_negative(tmp_path, field):
    arrays = _arrays()
    arrays[f"train_{field}"][0, 1, 2] = -1.0
    msg = _error(tmp_path, arrays)
    assert f"'train_{field}' holds a negative value at index (0, 1, 2)" in msg
    assert "spike counts must be non-negative integers" in msg


def test_poisson_rejects_non_integer(tmp_path):
    arrays = _arrays()
    arrays["valid_recon_data"][3, 0, 0] = 0.5
    msg = _error(tmp_path, arrays)
    assert "'valid_recon_data' holds a non-integer value at index (3, 0, 0)" in msg
    assert "spike counts must be non-negative integers" in msg


@pytest.mark.parametrize("recon", ["gamma", "zig"])
def test_gamma_zig_reject_negative_accept_continuous(tmp_path, recon):
    arrays = _arrays()
    arrays["train_recon_data"] += 0.25
    assert load_session(_raw(tmp_path / "ok.h5", arrays), recon).recon_dim == C_REC
    arrays["train_encod_data"][0, 0, 0] = -0.1
    assert "holds a negative value" in _error(tmp_path, arrays, recon)


def test_gaussian_accepts_negative(tmp_path):
    arrays = _arrays()
    arrays["train_encod_data"] -= 10.0
    assert load_session(_raw(tmp_path / "ok.h5", arrays), "gaussian").encod_dim == C_ENC


def test_unknown_recon(tmp_path):
    path = _raw(tmp_path / "ok.h5", _arrays())
    with pytest.raises(DataError, match="unknown reconstruction distribution 'bernoulli'"):
        load_session(path, "bernoulli")


def test_non_numeric_dataset(tmp_path):
    arrays = _arrays()
    arrays["train_inds"] = np.array([b"a"] * N_TR)
    assert "'train_inds' is not numeric" in _error(tmp_path, arrays)


def test_bad_attrs(tmp_path):
    path = _raw(tmp_path / "a.h5", _arrays(), {"bin_size_ms": -5.0})
    with pytest.raises(DataError, match="bin_size_ms=-5.0 must be > 0"):
        load_session(path)


def test_write_refuses_overwrite(tmp_path):
    path = write_session(tmp_path / "s.h5", _as_splits(_arrays()), {})
    before = path.read_bytes()
    with pytest.raises(DataError, match="already exists.*overwrite"):
        write_session(path, _as_splits(_arrays(1)), {})
    assert path.read_bytes() == before
    write_session(path, _as_splits(_arrays(1)), {}, overwrite=True)
    np.testing.assert_array_equal(
        load_session(path).splits["train"].encod_data, _arrays(1)["train_encod_data"]
    )


def test_write_validates_before_touching_disk(tmp_path):
    arrays = _arrays()
    arrays["train_encod_data"][0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_session(tmp_path / "s.h5", _as_splits(arrays), {})
    with pytest.raises(DataError, match="unknown dataset 'spikes'"):
        write_session(tmp_path / "s.h5", {"train": {"spikes": np.zeros(1)}}, {})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch):
    calls = []
    real = h5py.Group.create_dataset

    def crash(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_session(tmp_path / "s.h5", _as_splits(_arrays()), {})
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a crashed overwrite untouched
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    path = write_session(tmp_path / "s.h5", _as_splits(_arrays()), {})
    before = path.read_bytes()
    calls.clear()
    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(RuntimeError):
        write_session(path, _as_splits(_arrays(1)), {}, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_splits_constant():
    assert h5data.SPLITS == ("train", "valid", "test")
