"""Convert a Neural Latents Benchmark NWB file (DANDI 000128-000140 layout) into a session file.

The layout read: `units` with `spike_times` (seconds) and, in the benchmark's train files, a
boolean `heldout` column; `trials` with `start_time`, `stop_time`, `split` ('train', 'val',
'test') and the alignment event (MC_Maze: `move_onset_time`); hand velocity as the TimeSeries
`processing/behavior/hand_vel`. Trials are cut from `start_ms` to `end_ms` around the event and
binned; `forward_ms` more bins after the window give the forward-prediction target. As for the
tensor files, NLB 'train' trials become train/valid and 'val' trials become test.

Simplifications, said here because NLB's own tensors differ in detail: spikes are counted in
half-open bins [t, t + bin); behaviour is the mean of its samples in each bin (NLB resamples
with an anti-aliasing filter). Needs pynwb (`pip install pynwb`, or the `nwb` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lfads_lightning.data.format import write_session
from lfads_lightning.errors import DataError

COND_FIELDS = ("trial_type", "trial_version")


def _open(path: Path):
    try:
        from pynwb import NWBHDF5IO
    except ImportError:
        raise DataError(
            "reading NWB files needs pynwb: pip install pynwb (or pip install 'lfads-lightning[nwb]')"
        ) from None
    if not path.is_file():
        raise DataError(f"NWB file not found: {path}; pass an NLB .nwb file")
    try:
        return NWBHDF5IO(str(path), "r", load_namespaces=True)
    except Exception as err:  # noqa: BLE001 - h5py/pynwb raise many kinds for a bad file
        raise DataError(
            f"{path}: not a readable NWB file ({str(err).splitlines()[0]}); re-download it"
        ) from None


def _column(table, name: str, path: Path) -> np.ndarray:
    if table is None or name not in table.colnames:
        where = "trials" if table is None or table.name == "trials" else table.name
        raise DataError(f"{path}: the {where} table has no '{name}' column; is it an NLB file?")
    return np.asarray(table[name][:])


def bin_spikes(spike_times: list[np.ndarray], starts: np.ndarray, n_bins: int, bin_s: float):
    """Counts per trial x bin x unit in half-open bins [start + k bin, start + (k + 1) bin)."""
    counts = np.zeros((len(starts), n_bins, len(spike_times)), dtype=np.float32)
    for u, times in enumerate(spike_times):
        times = np.sort(np.asarray(times, dtype=np.float64))
        for i, t0 in enumerate(starts):
            edges = t0 + bin_s * np.arange(n_bins + 1)
            counts[i, :, u] = np.diff(np.searchsorted(times, edges, side="left"))
    return counts


def bin_series(data: np.ndarray, stamps: np.ndarray, starts: np.ndarray, n_bins: int, bin_s: float):
    """Mean of the samples in each bin (NaN where a bin has none)."""
    data = np.asarray(data, dtype=np.float64).reshape(len(stamps), -1)
    out = np.full((len(starts), n_bins, data.shape[1]), np.nan, dtype=np.float32)
    for i, t0 in enumerate(starts):
        idx = np.floor((stamps - t0) / bin_s + 1e-9).astype(np.int64)
        keep = (idx >= 0) & (idx < n_bins)
        for k in np.unique(idx[keep]):
            out[i, k] = data[keep][idx[keep] == k].mean(axis=0)
    return out


def _read_nwb(src: Path, align: str, progress: Any) -> dict[str, object]:
    """What the conversion needs from the file: trial splits and events, spike times ordered
    held-in first, condition ids and hand velocity if present."""
    with _open(src) as io:
        nwb = io.read()
        progress.total = 1 + (len(nwb.units) if nwb.units is not None else 0) + 3 + 1
        progress.update()
        trials, units = nwb.trials, nwb.units
        if trials is None or units is None:
            raise DataError(f"{src}: needs a trials and a units table (an NLB NWB file)")
        split = np.asarray(
            [s.decode() if isinstance(s, bytes) else str(s) for s in _column(trials, "split", src)]
        )
        event = _column(trials, align, src).astype(np.float64)
        spikes = []
        for u in range(len(units)):
            spikes.append(np.asarray(units["spike_times"][u]))
            progress.update()
        heldout = (
            _column(units, "heldout", src).astype(bool)
            if "heldout" in units.colnames
            else np.zeros(len(spikes), dtype=bool)
        )
        cond = None
        if all(f in trials.colnames for f in COND_FIELDS):
            keys = list(zip(*(np.asarray(trials[f][:]).tolist() for f in COND_FIELDS), strict=True))
            ids = {k: i for i, k in enumerate(sorted(set(keys)))}
            cond = np.asarray([ids[k] for k in keys], dtype=np.int64)
        vel = None
        behavior = nwb.processing.get("behavior")
        if behavior is not None and "hand_vel" in behavior.data_interfaces:
            ts = behavior["hand_vel"]
            vel = (np.asarray(ts.data[:]), np.asarray(ts.timestamps[:]))
    order = np.concatenate([np.flatnonzero(~heldout), np.flatnonzero(heldout)])
    n_in = int((~heldout).sum())
    if n_in == 0:
        raise DataError(f"{src}: every unit is marked heldout; no held-in neurons to encode")
    spikes = [spikes[u] for u in order]
    return {
        "split": split,
        "event": event,
        "spikes": spikes,
        "n_in": n_in,
        "cond": cond,
        "vel": vel,
    }


def _splits(
    src: Path, f: dict[str, Any], align: str, starts: np.ndarray, bins: tuple, valid_every: int
) -> dict[str, dict[str, np.ndarray]]:
    """Train/valid from NLB's train trials (every `valid_every`th is valid), test from val."""
    n_obs, n_fwd, bin_s = bins
    split, event, cond, vel, n_in = f["split"], f["event"], f["cond"], f["vel"], f["n_in"]
    progress = f["progress"]
    train_ids = np.flatnonzero(split == "train")
    groups = {
        "train": train_ids[np.arange(len(train_ids)) % valid_every != 0],
        "valid": train_ids[np.arange(len(train_ids)) % valid_every == 0],
        "test": np.flatnonzero(split == "val"),
    }
    splits: dict[str, dict[str, np.ndarray]] = {}
    for name, ids in groups.items():
        progress.update()
        if len(ids) == 0:
            continue
        if np.isnan(event[ids]).any():
            raise DataError(f"{src}: some {name} trials have no {align}; choose another --align")
        counts = bin_spikes(f["spikes"], starts[ids], n_obs + n_fwd, bin_s)
        splits[name] = {
            "encod_data": counts[:, :n_obs, :n_in],
            "recon_data": counts,
            "inds": ids.astype(np.int64),
        }
        if cond is not None:
            splits[name]["cond_idx"] = cond[ids]
        if vel is not None and name != "test":
            splits[name]["behavior"] = bin_series(vel[0], vel[1], starts[ids], n_obs, bin_s)
    return splits


def convert_nlb_nwb(
    src: str | Path,
    out_path: str | Path,
    align: str = "move_onset_time",
    start_ms: float = -250.0,
    end_ms: float = 450.0,
    forward_ms: float = 200.0,
    bin_size_ms: float = 5.0,
    behavior_lag_ms: float = 120.0,
    valid_every: int = 5,
    overwrite: bool = False,
) -> Path:
    """Write one NLB NWB file as a session file; returns the written path."""
    src = Path(src)
    if valid_every < 2:
        raise DataError(
            f"valid_every={valid_every} must be >= 2 so both train and valid get trials"
        )
    bin_s = bin_size_ms / 1000.0
    n_obs = int(round((end_ms - start_ms) / bin_size_ms))
    n_fwd = int(round(forward_ms / bin_size_ms))
    if n_obs <= 0 or n_fwd < 0:
        raise DataError(f"window {start_ms}..{end_ms} ms (+{forward_ms} ms) holds no bins")
    from lfads_lightning.progress import Progress

    # Steps: reading the file, each unit's spike times, binning each split, writing.
    progress = Progress(f"converting {src.name}", 1, "steps")
    f = _read_nwb(src, align, progress)
    f["progress"] = progress
    starts = f["event"] + start_ms / 1000.0
    splits = _splits(src, f, align, starts, (n_obs, n_fwd, bin_s), valid_every)
    attrs = {
        "bin_size_ms": float(bin_size_ms),
        "behavior_lag_bins": int(round(behavior_lag_ms / bin_size_ms)),
        "event_bin": int(round(-start_ms / bin_size_ms)),
        "event_name": align.removesuffix("_time").replace("_", " "),
        "description": f"NLB NWB {src.name}: {align} {start_ms:+g}..{end_ms:+g} ms, "
        f"{n_fwd} forward bins; test = NLB val trials; valid = every {valid_every}th train trial",
    }
    path = write_session(out_path, splits, attrs, overwrite=overwrite)
    progress.update()
    progress.close()
    return path
