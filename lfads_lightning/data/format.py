"""The project's HDF5 session format: read, validate and write (see docs/data-format.md).

One file holds one recording session. Everything is validated on load so that a bad file fails
with one clear line before any model is built or any tracking run is opened.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfads_lightning.atomic import atomic_path
from lfads_lightning.errors import DataError

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
# name -> (number of dims, description of the axes, stored dtype)
FIELDS: dict[str, tuple[int, str, type]] = {
    "encod_data": (3, "[trials, T_enc, C_enc]", np.float32),
    "recon_data": (3, "[trials, T_rec, C_rec]", np.float32),
    "ext_input": (3, "[trials, T_rec, E]", np.float32),
    "behavior": (3, "[trials, T_enc, B]", np.float32),
    "cond_idx": (1, "[trials]", np.int64),
    "truth": (3, "[trials, T_rec, C_rec]", np.float32),
    "inds": (1, "[trials]", np.int64),
}
RECON_CHECKS = {
    "poisson": "counts",
    "gamma": "nonneg",
    "zig": "nonneg",
    "gaussian": None,
    "mse": None,
}
_GEN_HINT = "generate one with `lfads data synth lorenz PATH` or correct data.paths"


@dataclass
class SplitData:
    """The arrays of one split (train, valid or test) of one session."""

    encod_data: np.ndarray
    recon_data: np.ndarray | None
    ext_input: np.ndarray | None = None
    behavior: np.ndarray | None = None
    cond_idx: np.ndarray | None = None
    truth: np.ndarray | None = None
    inds: np.ndarray | None = None

    @property
    def n_trials(self) -> int:
        return int(self.encod_data.shape[0])


@dataclass
class SessionData:
    """One validated session file; train and valid are always present, test maybe."""

    path: Path
    splits: dict[str, SplitData]
    bin_size_ms: float = 1.0
    behavior_lag_bins: int = 0
    description: str = ""

    @property
    def ref(self) -> SplitData:
        """train; in a file of trials to infer (`lfads sample --data`), its first split."""
        return self.splits.get("train") or next(iter(self.splits.values()))

    @property
    def encod_dim(self) -> int:
        return int(self.ref.encod_data.shape[2])

    @property
    def encod_seq_len(self) -> int:
        return int(self.ref.encod_data.shape[1])

    @property
    def recon_dim(self) -> int:
        return int(self.ref.recon_data.shape[2])

    @property
    def recon_seq_len(self) -> int:
        return int(self.ref.recon_data.shape[1])

    @property
    def ext_input_dim(self) -> int:
        return 0 if self.ref.ext_input is None else int(self.ref.ext_input.shape[2])


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry, for error messages."""
    flat = int(np.flatnonzero(mask.ravel())[0])
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


def _check_values(path: Path, name: str, x: np.ndarray, allow_nan: bool, check: str | None) -> None:
    """Reject non-finite entries and, per reconstruction distribution, impossible values."""
    bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
    if bad.any():
        what = "inf" if allow_nan else "NaN or inf"
        raise DataError(
            f"{path}: dataset '{name}' holds {what} at index {_first_bad(bad)}; "
            f"replace non-finite values (NaN is only allowed in test_recon_data)"
        )
    if check is None:
        return
    with np.errstate(invalid="ignore"):
        neg = x < 0
        if neg.any():
            rule = (
                "spike counts must be non-negative integers"
                if check == "counts"
                else "values must be >= 0 for the gamma and zig reconstruction distributions"
            )
            raise DataError(
                f"{path}: dataset '{name}' holds a negative value at index {_first_bad(neg)}; {rule}"
            )
        if check == "counts":
            frac = np.isfinite(x) & (x != np.round(x))
            if frac.any():
                raise DataError(
                    f"{path}: dataset '{name}' holds a non-integer value at index "
                    f"{_first_bad(frac)}; spike counts must be non-negative integers "
                    f"(use model.recon=gaussian, gamma or zig for continuous data)"
                )
            _warn_large_counts(path, name, x)


# Spikes per bin above this are not spike counts of one neuron in one bin (even 1 ms bins of a
# neuron firing at 1 kHz hold one spike); most likely a wrong bin width or other data.
MAX_PLAUSIBLE_COUNT = 1000
_warned: set[tuple[str, str]] = set()


def _warn_large_counts(path: Path, name: str, x: np.ndarray) -> None:
    if x.size == 0 or (str(path), name) in _warned:
        return
    top = float(np.nanmax(x)) if np.isfinite(x).any() else 0.0
    if top > MAX_PLAUSIBLE_COUNT:
        _warned.add((str(path), name))
        print(
            f"lfads: warning: {path}: dataset '{name}' holds counts up to {top:.6g} per bin "
            f"(> {MAX_PLAUSIBLE_COUNT}); likely a wrong bin width or data that are not spike "
            f"counts (use model.recon=gaussian for continuous signals)",
            file=sys.stderr,
        )


def _is_integral(arr: np.ndarray) -> bool:
    if np.issubdtype(arr.dtype, np.integer):
        return True
    return bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))


def _shape_error(path: Path, name: str, shape: tuple, expected: tuple) -> DataError:
    return DataError(
        f"{path}: dataset '{name}' has shape {tuple(shape)} but {tuple(expected)} was expected "
        f"({FIELDS[name.split('_', 1)[1]][1]}); rewrite it with matching trials, bins and channels"
    )


def validate_arrays(
    path: Path, data: Mapping[str, np.ndarray], recon: str | None = "poisson", req=REQUIRED_SPLITS
) -> dict[str, SplitData]:
    """Check the flat `{split_field: array}` mapping of one file; return typed splits.

    `recon=None` checks structure and finiteness only (used when writing). The checks run in
    order: the datasets present, their dimensions, each split's shapes, the splits against each
    other, then each split's optional fields and values.
    """
    if recon is not None and recon not in RECON_CHECKS:
        raise DataError(
            f"unknown reconstruction distribution {recon!r}; use one of {', '.join(RECON_CHECKS)}"
        )
    check = RECON_CHECKS.get(recon) if recon is not None else None
    _check_present(path, data, req)
    _check_ndims(path, data)
    splits = [s for s in SPLITS if f"{s}_encod_data" in data]
    dims = {s: _split_dims(path, data, s) for s in splits}
    ref = _check_consistent(path, data, splits, dims)
    out: dict[str, SplitData] = {}
    for s in splits:
        _check_optional_fields(path, data, s, ref)
        _check_split_values(path, data, s, check)
        out[s] = SplitData(
            **{
                f: None
                if f"{s}_{f}" not in data
                else np.asarray(data[f"{s}_{f}"], dtype=FIELDS[f][2])
                for f in FIELDS
            }
        )
    return out


def _check_present(path: Path, data: Mapping[str, np.ndarray], splits=REQUIRED_SPLITS) -> None:
    required = [f"{s}_{f}" for s in splits for f in ("encod_data", "recon_data")]
    missing = [name for name in required if name not in data]
    missing += [
        f"{s}_encod_data"
        for s in SPLITS
        if f"{s}_encod_data" not in data and any(k.startswith(f"{s}_") for k in data)
    ]
    if missing:
        raise DataError(
            f"{path}: missing required dataset '{missing[0]}'; a session file needs "
            f"{', '.join(required)} (and test_encod_data if it has a test split)"
        )


def _check_ndims(path: Path, data: Mapping[str, np.ndarray]) -> None:
    for name, arr in data.items():
        ndim = FIELDS[name.split("_", 1)[1]][0]
        if arr.ndim != ndim:
            raise DataError(
                f"{path}: dataset '{name}' has {arr.ndim} dims {tuple(arr.shape)} but needs {ndim} "
                f"{FIELDS[name.split('_', 1)[1]][1]}; rewrite it with that layout"
            )


def _split_dims(path: Path, data: Mapping[str, np.ndarray], s: str) -> dict[str, int]:
    """Bins and channels of one split; encod and recon must hold the same trials."""
    enc = data[f"{s}_encod_data"]
    rec = data.get(f"{s}_recon_data")
    n = enc.shape[0]
    if n == 0:
        required = " (the train split is required and cannot be dropped)" if s == "train" else ""
        fix = f"add trials{required or ' or drop the split'}"
        raise DataError(f"{path}: split '{s}' has 0 trials ({s}_encod_data is empty); {fix}")
    d = {"T_enc": enc.shape[1], "C_enc": enc.shape[2]}
    if rec is not None:
        if rec.shape[0] != n:
            raise DataError(
                f"{path}: {s}_encod_data has {n} trials but {s}_recon_data has {rec.shape[0]}; "
                f"both must hold the same trials in the same order"
            )
        if rec.shape[1] < enc.shape[1] or rec.shape[2] < enc.shape[2]:
            raise DataError(
                f"{path}: {s}_recon_data {tuple(rec.shape)} is smaller than {s}_encod_data "
                f"{tuple(enc.shape)}; need T_rec >= T_enc and C_rec >= C_enc (held-in first, "
                f"observed window first)"
            )
        d.update(T_rec=rec.shape[1], C_rec=rec.shape[2])
    ext = data.get(f"{s}_ext_input")
    d["E"] = 0 if ext is None else ext.shape[2]
    return d


def _check_consistent(
    path: Path, data: Mapping[str, np.ndarray], splits: list[str], dims: dict[str, dict[str, int]]
) -> dict[str, int]:
    """Every split shares train's (the first split's) bins, channels, external inputs."""
    ref = dims[splits[0]]
    for s in splits[1:]:
        for key, value in dims[s].items():
            if key in ref and value != ref[key]:
                raise DataError(
                    f"{path}: splits disagree on {key}: {splits[0]} has {ref[key]}, {s} has {value}; "
                    f"all splits must share bins, channels and external inputs"
                )
    n_beh = {s: data[f"{s}_behavior"].shape[2] for s in splits if f"{s}_behavior" in data}
    if len(set(n_beh.values())) > 1:
        raise DataError(f"{path}: splits disagree on behaviour channels {n_beh}; make them equal")
    return ref


def _check_optional_fields(
    path: Path, data: Mapping[str, np.ndarray], s: str, ref: dict[str, int]
) -> None:
    n = data[f"{s}_encod_data"].shape[0]
    expected = {
        "ext_input": (n, ref["T_rec"], ref["E"]),
        "truth": (n, ref["T_rec"], ref["C_rec"]),
        "cond_idx": (n,),
        "inds": (n,),
    }
    for field, shape in expected.items():
        arr = data.get(f"{s}_{field}")
        if arr is not None and tuple(arr.shape) != shape:
            raise _shape_error(path, f"{s}_{field}", arr.shape, shape)
    beh = data.get(f"{s}_behavior")
    if beh is not None and tuple(beh.shape[:2]) != (n, ref["T_enc"]):
        raise _shape_error(path, f"{s}_behavior", beh.shape, (n, ref["T_enc"], beh.shape[2]))
    for field in ("cond_idx", "inds"):
        arr = data.get(f"{s}_{field}")
        if arr is not None and not _is_integral(arr):
            raise DataError(f"{path}: dataset '{s}_{field}' must hold integers; store it as int64")


def _check_split_values(path: Path, data: Mapping[str, np.ndarray], s: str, check: Any) -> None:
    _check_values(path, f"{s}_encod_data", data[f"{s}_encod_data"], False, check)
    rec = data.get(f"{s}_recon_data")
    if rec is not None:
        _check_values(path, f"{s}_recon_data", rec, s == "test", check)
    if f"{s}_ext_input" in data:
        _check_values(path, f"{s}_ext_input", data[f"{s}_ext_input"], False, None)


def _read_attrs(path: Path, attrs: Mapping[str, Any]) -> tuple[float, int, str]:
    try:
        bin_size = float(attrs.get("bin_size_ms", 1.0))
        lag = int(attrs.get("behavior_lag_bins", 0))
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: attribute bin_size_ms or behavior_lag_bins is not a number; rewrite it as a number"
        ) from None
    if not bin_size > 0 or lag < 0:
        raise DataError(
            f"{path}: attribute bin_size_ms={bin_size} must be > 0 and behavior_lag_bins={lag} >= 0; fix the attributes"
        )
    desc = attrs.get("description", "")
    return bin_size, lag, desc.decode("utf-8", "replace") if isinstance(desc, bytes) else str(desc)


def load_session(path: str | Path, recon: str = "poisson", required=REQUIRED_SPLITS) -> SessionData:
    """Read and validate one session file (`required=()`: any splits); one-line DataErrors."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"data path {path} is a directory; give the path of an HDF5 session file in data.paths"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {path}; {_GEN_HINT}")
    data: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            for key, obj in f.items():
                split, _, field = key.partition("_")
                if split not in SPLITS or field not in FIELDS or not isinstance(obj, h5py.Dataset):
                    continue
                if obj.dtype.kind not in "biuf":
                    raise DataError(
                        f"{path}: dataset '{key}' is not numeric ({obj.dtype}); store numbers"
                    )
                data[key] = obj[()]
            attrs = dict(f.attrs)
    except DataError:
        raise
    except PermissionError as err:
        raise DataError(
            f"{path}: cannot be read ({err.strerror or 'permission denied'}); check its permissions "
            f"(chmod u+r) or run as its owner"
        ) from None
    except OSError as err:
        if not os.access(path, os.R_OK) or "ermission denied" in str(err):
            raise DataError(
                f"{path}: cannot be read (permission denied); check its permissions (chmod u+r) "
                f"or run as its owner"
            ) from None
        raise DataError(
            f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]}); the file is malformed, "
            f"regenerate or reconvert it"
        ) from None
    bin_size, lag, desc = _read_attrs(path, attrs)
    splits = validate_arrays(path, data, recon, required)
    return SessionData(path, splits, bin_size, lag, desc)


def write_session(
    path: str | Path,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    attrs: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Validate and write one session file atomically (temp file + os.replace)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(
            f"{path} already exists; pass overwrite=True (--overwrite) or choose another path"
        )
    flat: dict[str, np.ndarray] = {}
    for split, fields in splits.items():
        if split not in SPLITS:
            raise DataError(f"{path}: unknown split {split!r}; use {', '.join(SPLITS)}")
        for field, arr in fields.items():
            if field not in FIELDS:
                raise DataError(f"{path}: unknown dataset {field!r}; use {', '.join(FIELDS)}")
            if arr is not None:
                flat[f"{split}_{field}"] = np.asarray(arr)
    validate_arrays(path, flat, recon=None)
    _read_attrs(path, attrs)
    needed = sum(a.nbytes for a in flat.values())
    with atomic_path(path, needed) as tmp, h5py.File(tmp, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, arr in flat.items():
            dtype = FIELDS[name.split("_", 1)[1]][2]
            f.create_dataset(
                name, data=arr.astype(dtype, copy=False), compression="gzip", compression_opts=1
            )
    return path
