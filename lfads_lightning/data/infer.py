"""Files of new trials to infer (`lfads sample RUN --data NEW.h5`), checked against a model.

Such a file holds only the trials to infer: `encod_data` [trials, T_enc, C_enc] and optionally
`recon_data`, `behavior`, `cond_idx`, `truth`, `ext_input` (names as in a session file, without
a split prefix; they become the `test` split of the output). A session file's split-prefixed
datasets are accepted too (any of train/valid/test; train and valid need their recon_data).
Every check runs before a model is loaded, and each failure is one line naming the file, the
dataset, the shape expected and found, and the fix.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lfads_lightning.data.format import FIELDS, SPLITS, SessionData, _read_attrs, validate_arrays
from lfads_lightning.errors import DataError

UNPREFIXED_SPLIT = "test"  # where the trials of an unprefixed file go in the output


@dataclass(frozen=True)
class ModelShape:
    """What a trained model takes: held-in (encoder) neurons, recon neurons, bins."""

    encod_dim: int
    recon_dim: int
    encod_seq_len: int
    recon_seq_len: int
    ext_input_dim: int = 0


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict, bool]:
    """The numeric datasets (split-prefixed names for unprefixed ones), the attributes, and
    whether the file names its datasets without a split prefix."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}; pass an existing HDF5 file of trials")
    try:
        with h5py.File(path, "r") as f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            plain = [k for k in names if k in FIELDS]
            data = {}
            for key in names:
                split, _, field = key.partition("_")
                name = f"{UNPREFIXED_SPLIT}_{key}" if key in plain else key
                if key not in plain and (split not in SPLITS or field not in FIELDS):
                    continue
                if f[key].dtype.kind not in "biuf":
                    raise DataError(f"{path}: dataset '{key}' is not numeric ({f[key].dtype})")
                data[name] = f[key][()]
            return data, dict(f.attrs), bool(plain)
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not os.access(path, os.R_OK):
            first = "permission denied"
        raise DataError(
            f"{path}: not a readable HDF5 file ({first}); pass an HDF5 file with an encod_data "
            f"dataset [trials, T_enc, C_enc]"
        ) from None


def _check_against_model(
    path: Path, data: dict[str, np.ndarray], model: ModelShape, plain: bool
) -> None:
    """Neurons and bins of every split's encod/recon data against the model's."""
    for key, arr in data.items():
        split, _, field = key.partition("_")
        want = {
            "encod_data": (model.encod_seq_len, model.encod_dim, "held-in neurons"),
            "recon_data": (model.recon_seq_len, model.recon_dim, "recon neurons"),
        }.get(field)
        if want is None or arr.ndim != 3:
            continue
        bins, neurons, what = want
        if tuple(arr.shape[1:]) != (bins, neurons):
            shown = key.removeprefix(f"{UNPREFIXED_SPLIT}_") if plain else key
            raise DataError(
                f"{path}: dataset '{shown}' has shape {tuple(arr.shape)} but the model takes "
                f"(trials, {bins}, {neurons}) ({bins} bins, {neurons} {what}); give the same "
                f"bins and neurons, in the same order, as the data the model was trained on"
            )


def load_trials(path: str | Path, model: ModelShape, recon: str = "poisson") -> SessionData:
    """Read and check a file of trials to infer; NaN recon_data stands in where it is absent."""
    path = Path(path)
    data, attrs, plain = _read(path)
    if not any(k.endswith("_encod_data") for k in data):
        raise DataError(
            f"{path}: no encoder data (dataset 'encod_data' [trials, T_enc, C_enc]); a file of "
            f"trials to infer needs at least encod_data, with the model's held-in neurons"
        )
    for split in ("train", "valid"):
        if f"{split}_encod_data" in data and f"{split}_recon_data" not in data:
            raise DataError(
                f"{path}: dataset '{split}_recon_data' is missing; the {split} split needs it "
                f"(or name the trials' datasets without a split prefix: encod_data, ...)"
            )
    _check_against_model(path, data, model, plain)
    for split in SPLITS:
        enc = data.get(f"{split}_encod_data")
        if enc is not None and enc.ndim == 3 and f"{split}_recon_data" not in data:
            shape = (enc.shape[0], model.recon_seq_len, model.recon_dim)
            data[f"{split}_recon_data"] = np.full(shape, np.nan, np.float32)
    splits = validate_arrays(path, data, recon, req=())
    bin_size, lag, desc = _read_attrs(path, attrs)
    session = SessionData(path, splits, bin_size, lag, desc)
    if session.ext_input_dim != model.ext_input_dim:
        raise DataError(
            f"{path}: the trials have {session.ext_input_dim} external inputs but the model takes "
            f"{model.ext_input_dim}; give ext_input [trials, T_rec, {model.ext_input_dim}]"
        )
    return session
