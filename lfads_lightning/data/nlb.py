"""Convert Neural Latents Benchmark tensor files into the project's session format.

NLB ships `<name>_train.h5` (held-in / held-out spikes, forward bins, behaviour) and
`<name>_val.h5` (the evaluation trials). Train trials become our train/valid splits; the
evaluation trials become the test split, with NaN where NLB withholds data (forward bins).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from lfads_lightning.data.format import write_session
from lfads_lightning.errors import DataError

# Lag between neural activity and hand velocity used by NLB's velocity decoding, in ms.
BEHAVIOR_LAG_MS = {
    "mc_maze": 100.0,
    "mc_maze_small": 120.0,
    "mc_maze_medium": 120.0,
    "mc_maze_large": 120.0,
}


def _find_name(src: Path) -> str:
    names = sorted(p.name[: -len("_train.h5")] for p in src.glob("*_train.h5"))
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise DataError(
            f"{src}: expected exactly one <name>_train.h5 NLB tensor file, found {found}; "
            f"point SRC_DIR at one dataset's directory"
        )
    return names[0]


def _read(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in required if k not in f]
            if missing:
                raise DataError(
                    f"{path}: missing NLB dataset '{missing[0]}' (needs {', '.join(required)}); "
                    f"re-export the NLB tensors with make_train_input_tensors/make_eval_input_tensors"
                )
            return {
                k: np.asarray(f[k][()], dtype=np.float32) for k in required + optional if k in f
            }
    except OSError as err:
        raise DataError(
            f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]}); re-download it"
        ) from None


def _train_tensors(train_file: Path) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """(train tensors, recon = held-in | held-out [+ forward bins], number of forward bins)."""
    tr = _read(
        train_file,
        ("train_spikes_heldin", "train_spikes_heldout"),
        ("train_spikes_heldin_forward", "train_spikes_heldout_forward", "train_behavior"),
    )
    heldin, heldout = tr["train_spikes_heldin"], tr["train_spikes_heldout"]
    n_fwd_parts = ("train_spikes_heldin_forward" in tr) + ("train_spikes_heldout_forward" in tr)
    if n_fwd_parts == 1:
        raise DataError(
            f"{train_file}: has only one of train_spikes_heldin_forward / train_spikes_heldout_forward; "
            f"include both or neither"
        )
    recon = np.concatenate([heldin, heldout], axis=2)
    if n_fwd_parts == 2:
        forward = np.concatenate(
            [tr["train_spikes_heldin_forward"], tr["train_spikes_heldout_forward"]], axis=2
        )
        if forward.shape[0] != recon.shape[0] or forward.shape[2] != recon.shape[2]:
            raise DataError(
                f"{train_file}: forward tensors {forward.shape} do not match held-in/held-out {recon.shape}"
            )
        recon = np.concatenate([recon, forward], axis=1)
    return tr, recon, recon.shape[1] - heldin.shape[1]


def _test_split(
    val_file: Path, heldin: np.ndarray, heldout: np.ndarray, n_fwd: int
) -> dict[str, np.ndarray]:
    """NLB's evaluation trials as the test split: NaN where NLB withholds data."""
    ev = _read(val_file, ("eval_spikes_heldin",), ("eval_spikes_heldout",))
    e_in = ev["eval_spikes_heldin"]
    n_eval, n_obs = e_in.shape[:2]
    e_out = ev.get("eval_spikes_heldout", np.zeros((n_eval, n_obs, heldout.shape[2])))
    if (n_obs, e_in.shape[2]) != heldin.shape[1:] or e_out.shape != (n_eval, *heldout.shape[1:]):
        raise DataError(
            f"{val_file}: eval tensors {e_in.shape} / {e_out.shape} do not match the train "
            f"held-in {heldin.shape} / held-out {heldout.shape} bins and neurons; use matching files"
        )
    n_recon = heldin.shape[2] + heldout.shape[2]
    e_rec = np.full((n_eval, n_obs + n_fwd, n_recon), np.nan, np.float32)
    e_rec[:, :n_obs, : e_in.shape[2]] = e_in
    if "eval_spikes_heldout" in ev:
        e_rec[:, :n_obs, e_in.shape[2] :] = ev["eval_spikes_heldout"]
    return {"encod_data": e_in, "recon_data": e_rec, "inds": np.arange(n_eval)}


def _session_attrs(
    name: str, bin_size_ms: float, lag_bins: int | None, description: str
) -> dict[str, object]:
    if lag_bins is None:
        lag_bins = int(round(BEHAVIOR_LAG_MS.get(name.lower(), 0.0) / bin_size_ms))
    attrs: dict[str, object] = {
        "bin_size_ms": float(bin_size_ms),
        "behavior_lag_bins": int(lag_bins),
        "description": description,
    }
    if name.lower() in BEHAVIOR_LAG_MS:  # MC_Maze trials start 250 ms before movement onset
        attrs.update(event_bin=int(round(250.0 / bin_size_ms)), event_name="movement onset")
    return attrs


def convert_nlb_tensors(
    src: str | Path,
    out_path: str | Path,
    valid_every: int = 5,
    overwrite: bool = False,
    bin_size_ms: float = 5.0,
    behavior_lag_bins: int | None = None,
) -> Path:
    """Write an NLB dataset directory as one session file; returns the written path.

    `behavior_lag_bins=None` takes NLB's lag for known MC_Maze sets (0 for other names).
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(
            f"NLB source directory not found: {src}; pass the directory holding <name>_train.h5"
        )
    if valid_every < 2:
        raise DataError(
            f"valid_every={valid_every} must be >= 2 so both train and valid get trials"
        )
    name = _find_name(src)
    train_file = src / f"{name}_train.h5"
    tr, recon, n_fwd = _train_tensors(train_file)
    heldin = tr["train_spikes_heldin"]
    trial = np.arange(heldin.shape[0])
    is_valid = trial % valid_every == 0
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split, sel in (("train", ~is_valid), ("valid", is_valid)):
        splits[split] = {"encod_data": heldin[sel], "recon_data": recon[sel], "inds": trial[sel]}
        if "train_behavior" in tr:
            splits[split]["behavior"] = tr["train_behavior"][sel]
    val_file = src / f"{name}_val.h5"
    if val_file.exists():
        splits["test"] = _test_split(val_file, heldin, tr["train_spikes_heldout"], n_fwd)
    description = (
        f"NLB tensors '{name}' converted from {train_file}"
        + (f" and {val_file} (test = NLB val trials)" if "test" in splits else "")
        + f"; valid = every {valid_every}th train trial"
    )
    attrs = _session_attrs(name, bin_size_ms, behavior_lag_bins, description)
    return write_session(out_path, splits, attrs, overwrite=overwrite)
